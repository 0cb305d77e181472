// The console's built files are embedded (`src/console.rs`): rebuild when
// any of them is added, removed or changed.
fn main() {
    println!("cargo:rerun-if-changed=../console/dist");
}
