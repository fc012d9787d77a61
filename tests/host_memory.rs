//! `fwp::host_memory::keep_freed_memory`: after it, a large CPU tensor allocated again after being
//! freed reuses the pages of the first instead of faulting fresh ones in.
//!
//! Its own test binary without libtest's harness (Cargo.toml: `harness = false`): the check runs on
//! the main thread, as the experiment binaries allocate (glibc's main arena; see
//! `fwp::host_memory`), and no other test allocates while the page faults are counted.

use tch::{Device, Kind, Tensor};

/// The process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Field 2, the command name, is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Floats in the 64 MiB block, and in a block one page smaller.
const BLOCK: i64 = 16 << 20;
const SMALLER: i64 = BLOCK - 1024;

/// Page faults while a tensor of `floats` f32 values is allocated, filled (every page touched) and
/// freed.
fn faults_of_one_block(floats: i64) -> u64 {
    let before = minor_faults();
    let t = Tensor::ones([floats], (Kind::Float, Device::Cpu));
    assert_eq!(t.double_value(&[12345]), 1.0);
    drop(t);
    minor_faults() - before
}

fn main() {
    a_freed_large_block_is_reused_without_page_faults();
    println!("test a_freed_large_block_is_reused_without_page_faults ... ok");
}

/// Whether the kernel backs large anonymous mappings with 2 MiB pages without being asked
/// (transparent huge pages in `always` mode): then a fresh block takes 512 times fewer faults, and
/// fault counts cannot tell a fresh block from a reused one.
fn huge_pages_always() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}

fn a_freed_large_block_is_reused_without_page_faults() {
    if huge_pages_always() {
        println!("transparent huge pages are always on here: page faults cannot show the reuse");
        assert!(fwp::host_memory::keep_freed_memory());
        return;
    }
    let pages = (64u64 << 20) / 4096;
    // The premise: by default, glibc maps a block this large afresh every time.
    faults_of_one_block(BLOCK);
    let by_default = faults_of_one_block(SMALLER);
    println!(
        "64 MiB block freed, then a block one page smaller: {by_default} page faults by default"
    );
    assert!(
        by_default >= pages / 2,
        "{by_default} faults for {pages} pages"
    );

    assert!(fwp::host_memory::keep_freed_memory());
    faults_of_one_block(BLOCK);
    let kept = faults_of_one_block(SMALLER);
    println!("and {kept} after keep_freed_memory");
    assert!(kept < pages / 16, "{kept} faults for {pages} pages");
    // A block of the same size again may not fit the freed one: the aligned allocation asks for
    // some bytes more than the block, which the freed block has only when the small chunk after
    // it was free too (it depends on where other allocations landed). Printed, not asserted.
    println!(
        "(the same 64 MiB again: {} faults)",
        faults_of_one_block(BLOCK)
    );

    // A trim hands the pages back: the next block faults them in again.
    fwp::host_memory::release_free_memory();
    let after_trim = faults_of_one_block(SMALLER);
    println!("and {after_trim} after release_free_memory");
    assert!(
        after_trim >= pages / 2,
        "{after_trim} faults for {pages} pages"
    );
}
