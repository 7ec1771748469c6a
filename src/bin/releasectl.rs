fn main() { eprintln!("releasectl: not built yet"); std::process::exit(2) }
