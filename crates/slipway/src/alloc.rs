//! The process's allocator, chosen once by what the process is, before any allocation.
//!
//! - A one-shot command (`plan`, `apply`, `status`, …) allocates and frees millions of small
//!   strings, maps and JSON values for a large stack and then exits: mimalloc. glibc's
//!   malloc, free and their consolidation took a fifth of a 10,000-resource plan's CPU time
//!   (perf), and with mimalloc the same plan takes about half as long (docs/benchmarks.md,
//!   section 1).
//! - A long-lived process (`serve`, the supervisors, the router, the watchdog) and the
//!   bounded policy child keep glibc's allocator: mimalloc's heap per thread held a `serve`
//!   of 1,000 environments at twice the resident memory (60 MiB against 29 MiB), and
//!   `bound_heap` (main.rs) keeps glibc's close to what it holds. The policy child's memory
//!   limit (`RLIMIT_AS`) is tested against glibc's.
//!
//! The choice is made by a function in `.init_array`, which glibc runs with the process's
//! arguments before `main` and before the Rust runtime allocates anything; it never changes
//! afterwards, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// Whether this process keeps the system allocator (set before the first allocation).
static SYSTEM: AtomicBool = AtomicBool::new(false);

/// The subcommands that run for long, or under a memory limit of their own.
const LONG_LIVED: [&[u8]; 5] = [
    b"serve",
    b"__supervise",
    b"__router",
    b"__watchdog",
    b"__policy",
];

/// Whether the arguments `args` (without the program's name) name a long-lived subcommand.
/// Any argument counts: a value that happens to spell one (`--env serve`) only costs that
/// command the faster allocator.
fn long_lived<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> bool {
    args.any(|arg| LONG_LIVED.contains(&arg))
}

/// Run by glibc before `main`, with the process's arguments.
extern "C" fn choose(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    if argv.is_null() {
        return;
    }
    let count = usize::try_from(argc).unwrap_or(0);
    // SAFETY: glibc passes `main`'s own argc and argv to `.init_array` functions: `argc`
    // pointers, each to a NUL-terminated string, which live for the whole process.
    let args = (1..count).filter_map(|i| unsafe {
        let arg = *argv.add(i);
        (!arg.is_null()).then(|| CStr::from_ptr(arg).to_bytes())
    });
    if long_lived(args) {
        SYSTEM.store(true, Ordering::Relaxed);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
static CHOOSE: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = choose;

/// The global allocator: mimalloc, or the system's for long-lived processes.
pub struct Chosen;

// SAFETY: each call goes to one allocator, the same for the whole process (the choice is
// made before the first allocation), so a block is always freed or resized by the allocator
// that made it; both uphold `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            if SYSTEM.load(Ordering::Relaxed) {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            if SYSTEM.load(Ordering::Relaxed) {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, passed on; `ptr` came from the same allocator.
        unsafe {
            if SYSTEM.load(Ordering::Relaxed) {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on; `ptr` came from the same allocator.
        unsafe {
            if SYSTEM.load(Ordering::Relaxed) {
                System.realloc(ptr, layout, new_size)
            } else {
                MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&'static str]) -> impl Iterator<Item = &'static [u8]> {
        list.iter()
            .map(|a| a.as_bytes())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn long_lived_processes_keep_the_system_allocator_and_commands_get_mimalloc() {
        for long in [
            &["serve"][..],
            &["--home", "/h", "serve", "--listen", "127.0.0.1:0"],
            &["__supervise", "/h/run/dev"],
            &["__router", "--listen", "127.0.0.1:1"],
            &["__watchdog"],
            &["__policy"],
        ] {
            assert!(long_lived(args(long)), "{long:?}");
        }
        for short in [
            &["plan", "--env", "dev"][..],
            &["apply", "--env", "dev", "--yes"],
            &["status", "--output", "json"],
            &["validate", "--repo", "/r/serve-me"],
            &[],
        ] {
            assert!(!long_lived(args(short)), "{short:?}");
        }
    }
}
