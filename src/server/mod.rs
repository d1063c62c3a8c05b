//! The server side: the request list and parsing ([`protocol`]), carrying a
//! request out on the engine ([`dispatch`]).

pub mod dispatch;
pub mod protocol;
