//! A valid component of the wrong world: a plain WASI command. Loading it as a plugin
//! must fail with an error that says which interfaces it exports instead.
fn main() {
    println!("I am not a tagwarden plugin");
}
