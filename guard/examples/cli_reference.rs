//! Prints the command reference (`docs/cli.md`) from the command line's definitions; `cargo xtask
//! docs` runs it and writes the page.
#![forbid(unsafe_code)]

fn main() {
    print!("{}", proxyguard::cli_reference());
}
