fn main() -> std::process::ExitCode {
    collapse::cli::main()
}
