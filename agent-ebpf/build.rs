//! Link flags per kernel object: the network probe's object carries BTF (`bpf-linker --btf`),
//! which the kernel requires to create its socket-storage map (`NET_LISTENER_OWNERS`: a map of
//! type `BPF_MAP_TYPE_SK_STORAGE` needs BTF key and value type ids). The other objects keep
//! their plain ELF form.

fn main() {
    println!("cargo::rustc-link-arg-bin=network=--btf");
    println!("cargo::rerun-if-changed=build.rs");
}
