//! `uniffi-bindgen generate --language kotlin|swift|python <libcairn_mobile.so>`: the
//! generator at exactly the scaffolding's uniffi version (a mismatch breaks the bindings
//! at run time, not at build time).

fn main() {
    uniffi::uniffi_bindgen_main()
}
