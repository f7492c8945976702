//! The `collapse` binary: all of it is the library's, except the command line (`cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
