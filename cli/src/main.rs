fn main() {
    println!("iochaos");
}
