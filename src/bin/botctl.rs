//! `botctl`: the operator's command line for botd.

fn main() {
    std::process::exit(botd::botctl::main());
}
