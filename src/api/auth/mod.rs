//! Request authentication shared by the dialects.

pub mod ncp;
pub mod nhn;
