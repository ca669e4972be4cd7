//! `walvault-fetch`: a thin shell over [`walvault::cli::fetch_main`].

fn main() -> std::process::ExitCode {
    walvault::cli::fetch_main()
}
