//! What a crate that depends on fwp puts in its build script: fwp's link arguments, which keep
//! libtorch's CUDA library in the link and let the binary find libtorch and the CUDA runtime without
//! LD_LIBRARY_PATH. Cargo gives a package's link arguments to its own binaries only, so a dependent
//! repeats them; fwp exports them as DEP_FWP_LINK_ARGS (';'-separated).

fn main() {
    let args = std::env::var("DEP_FWP_LINK_ARGS")
        .expect("DEP_FWP_LINK_ARGS is set by fwp's build script for crates that depend on fwp");
    for arg in args.split(';').filter(|a| !a.is_empty()) {
        println!("cargo:rustc-link-arg={arg}");
    }
}
