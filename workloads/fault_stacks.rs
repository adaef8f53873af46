// Faults in known Rust functions, for `faults --stacks`: N pages in `touch_near`, M in
// `touch_deep` through `outer_deep` and `middle_deep`. Prints the kernel's own counts of each
// phase (getrusage deltas), as fault_stacks.c does, with transparent huge pages off for it.
use std::hint::black_box;

const PAGE: usize = 4096;

fn faults() -> (i64, i64) {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc_rusage = std::mem::zeroed();
        getrusage(0, &mut usage);
        (usage.minflt, usage.majflt)
    }
}

#[repr(C)]
struct libc_rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss: i64,
    ixrss: i64,
    idrss: i64,
    isrss: i64,
    minflt: i64,
    majflt: i64,
    rest: [i64; 8],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// `PR_SET_THP_DISABLE`: a page touched is then one fault, whatever the kernel's THP setting.
const PR_SET_THP_DISABLE: i32 = 41;

#[inline(never)]
fn touch_near(pages: &mut [u8]) {
    for i in (0..pages.len()).step_by(PAGE) {
        pages[i] = i as u8;
    }
    black_box(pages);
}

#[inline(never)]
fn touch_deep(pages: &mut [u8]) {
    for i in (0..pages.len()).step_by(PAGE) {
        pages[i] = (i + 1) as u8;
    }
    black_box(pages);
}

#[inline(never)]
fn middle_deep(pages: &mut [u8]) {
    touch_deep(black_box(pages));
    black_box(());
}

#[inline(never)]
fn outer_deep(pages: &mut [u8]) {
    middle_deep(black_box(pages));
    black_box(());
}

fn main() {
    // SAFETY: prctl with an option that takes plain integers.
    unsafe { prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    // Zeroed allocations this large are fresh mappings: each page faults at its first write.
    let mut near = vec![0u8; args[0] * PAGE];
    let mut deep = vec![0u8; args[1] * PAGE];
    let start = faults();
    touch_near(&mut near);
    let middle = faults();
    outer_deep(&mut deep);
    let end = faults();
    // On stderr: stdout may be the tracer's report.
    eprintln!("near {} {}", middle.0 - start.0, middle.1 - start.1);
    eprintln!("deep {} {}", end.0 - middle.0, end.1 - middle.1);
    black_box((near, deep));
}
