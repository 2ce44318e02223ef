package handler

func Hello() string { return "hello" }
