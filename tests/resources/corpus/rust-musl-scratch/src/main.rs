fn main() { println!("ferris"); }
