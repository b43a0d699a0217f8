//! The on-device runtime (tokio): drives an [`crate::engine::Engine`] over websockets and a
//! [`crate::store::Storage`].
