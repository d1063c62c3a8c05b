fn main() {
    eprintln!("tierd: the CLI is being assembled");
}
