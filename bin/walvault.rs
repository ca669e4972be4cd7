//! `walvault`: a thin shell over [`walvault::cli::walvault_main`].

fn main() -> std::process::ExitCode {
    walvault::cli::walvault_main()
}
