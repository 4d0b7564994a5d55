//! The `slipway` binary: the CLI interface and glue code. Everything it does is in the library
//! crates; this crate only parses arguments, wires them together and prints.
fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == "__supervise").unwrap_or(false) {
        // The process supervisor: runs detached from any CLI invocation (see
        // slipway_providers::process).
        let Some(spec) = args.get(2) else {
            eprintln!("error: __supervise needs the path of a supervisor spec");
            std::process::exit(2);
        };
        std::process::exit(slipway_providers::process::supervise(std::path::Path::new(spec)));
    }
    eprintln!("slipway: the CLI is being assembled");
    std::process::exit(1);
}
