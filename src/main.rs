//! The `devpocket` command. Everything lives in the library; see `devpocket --help`.

fn main() -> std::process::ExitCode {
    devpocket::cli::main()
}
