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
//! - mimalloc asks for transparent huge pages (`madvise(MADV_HUGEPAGE)` on its arena) only for
//!   the commands that read a whole stack and nothing else (`validate`, `render`, `plan`,
//!   `compare`). A huge page costs the first touch 2 MiB of zeroing, which a large stack pays
//!   back in page faults and TLB misses (a 10,000-resource plan is 7 % slower without them),
//!   but a small command never does: a one-`file` apply takes 22 % more CPU with them (9.2 ms
//!   against 11.8 ms, interleaved runs). The option is set after mimalloc's own start, so that
//!   mimalloc does not call `prctl(PR_SET_THP_DISABLE)`, which every process the command
//!   starts (supervisors, and through them the environments' programs) would inherit.
//!
//! The choice is made by a function in `.init_array`, which glibc runs with the process's
//! arguments before `main` and before the Rust runtime allocates anything; it never changes
//! afterwards, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, c_char, c_int, c_long};
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

/// The subcommands that read a whole stack and change nothing: the ones whose time, for a
/// large stack, is mostly the allocator's and the page faults' (docs/benchmarks.md, section 1).
const WHOLE_STACK: [&[u8]; 4] = [b"validate", b"render", b"plan", b"compare"];

/// `mi_option_allow_thp` in mimalloc v3's `mi_option_e` (mimalloc.h), which libmimalloc-sys
/// does not name; `the_option_turns_huge_pages_off_for_mimalloc_s_arena` checks it against
/// what mimalloc does.
const MI_OPTION_ALLOW_THP: c_int = 43;

unsafe extern "C" {
    fn mi_process_init();
    fn mi_option_set(option: c_int, value: c_long);
}

/// Whether the arguments `args` (without the program's name) name a long-lived subcommand.
/// Any argument counts: a value that happens to spell one (`--env serve`) only costs that
/// command the faster allocator.
fn long_lived<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> bool {
    args.any(|arg| LONG_LIVED.contains(&arg))
}

/// Whether the arguments `args` name a command that reads a whole stack, which keeps
/// mimalloc's huge pages. As with `long_lived`, any argument counts (`--env plan` only costs
/// that command some zeroing).
fn whole_stack<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> bool {
    args.any(|arg| WHOLE_STACK.contains(&arg))
}

/// Run by glibc before `main`, with the process's arguments.
extern "C" fn choose(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    if argv.is_null() {
        return;
    }
    let count = usize::try_from(argc).unwrap_or(0);
    // SAFETY: glibc passes `main`'s own argc and argv to `.init_array` functions: `argc`
    // pointers, each to a NUL-terminated string, which live for the whole process.
    let args = || {
        (1..count).filter_map(|i| unsafe {
            let arg = *argv.add(i);
            (!arg.is_null()).then(|| CStr::from_ptr(arg).to_bytes())
        })
    };
    if long_lived(args()) {
        SYSTEM.store(true, Ordering::Relaxed);
    } else if !whole_stack(args()) {
        // SAFETY: both are mimalloc's documented entry points, callable at any time.
        // mimalloc is started here (built with gcc, its constructor has no priority and runs
        // after this one; `mi_process_init` does nothing when it started already). Starting
        // it first is what keeps the option from reaching its start, where it would disable
        // huge pages with `prctl` for this process and every one it starts; set afterwards,
        // it only stops mimalloc's `madvise`.
        unsafe {
            mi_process_init();
            mi_option_set(MI_OPTION_ALLOW_THP, 0);
        }
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

    #[test]
    fn only_the_commands_that_read_a_whole_stack_keep_huge_pages() {
        for whole in [
            &["plan", "--env", "dev"][..],
            &["--home", "/h", "render", "--env", "dev", "--ref", "main"],
            &["validate", "--repo", "/r"],
            &["compare", "dev", "prod"],
        ] {
            assert!(whole_stack(args(whole)), "{whole:?}");
        }
        for small in [
            &["apply", "--env", "dev", "--yes"][..],
            &["destroy", "--env", "dev", "--yes"],
            &["status", "--output", "json"],
            &["env", "create", "branch-1234"],
            &[],
        ] {
            assert!(!whole_stack(args(small)), "{small:?}");
        }
    }

    /// The flags of the mapping holding `addr`, from /proc/self/smaps.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_owned();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// This test binary is no whole-stack command, so `choose` turned huge pages off: the
    /// arena mimalloc reserved has no `hg` (`MADV_HUGEPAGE`) flag. With the option's number
    /// wrong (another of mimalloc's options), the arena has it; with the option set before
    /// mimalloc's start, the process has huge pages disabled altogether.
    #[test]
    fn the_option_turns_huge_pages_off_for_mimalloc_s_arena() {
        let block = vec![1u8; 4 << 20];
        let flags = vm_flags(block.as_ptr() as usize);
        assert!(flags.split(' ').any(|f| f == "rd"), "{flags}");
        assert!(!flags.split(' ').any(|f| f == "hg"), "{flags}");
        // And not through `prctl(PR_SET_THP_DISABLE)`, which the programs the command starts
        // would inherit (a kernel without huge pages has no such line).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(!status.lines().any(|l| l == "THP_enabled:\t0"), "{status}");
    }
}
