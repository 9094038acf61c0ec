use std::process::ExitCode;

fn main() -> ExitCode {
    lfx_sync::cli::target_main()
}
