//! `walvault-push`: a thin shell over [`walvault::cli::push_main`].

fn main() -> std::process::ExitCode {
    walvault::cli::push_main()
}
