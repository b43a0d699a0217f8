//! The platform network adapters against fake host sockets (no network).
