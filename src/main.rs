//! `botd`: the bot supervisor daemon. Everything but argument parsing lives in the library.

fn main() {
    std::process::exit(botd::cli::main());
}
