//! Rate limiting: the math, the local estimators, the Redis-backed leases and the
//! per-request evaluation of a route's policies.

pub mod algorithm;
pub mod blocks;
pub mod calendar;
mod decide;
pub mod delay;
pub mod headers;
pub mod inspect;
pub mod key;
pub mod lease;
pub mod link;
pub mod meter;
pub mod policy;
pub mod receipt;
pub mod scripts;
pub mod settle;
pub mod sketch;
pub mod slots;
pub mod sync;
pub mod table;

pub use decide::{Check, CostError, Outcome};
pub use key::RequestFacts;
pub use link::RedisLink;
pub use policy::Policy;
pub use receipt::Receipt;
