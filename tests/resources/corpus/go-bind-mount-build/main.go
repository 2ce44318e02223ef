package main

func main() { println("cli") }
