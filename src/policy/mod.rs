//! The policies the flows apply, each taking only the state it uses (never a whole config
//! generation): admission (per-tenant rate limits and concurrency caps, `gcra` for the
//! fleet-wide limit in Redis), the signed exchange with NXCloud, what NXCloud's answers
//! say (`answers`: vendor codes, busy back-off), and callback delivery with its replay
//! memory.

pub mod admission;
pub mod answers;
pub mod delivery;
pub mod exchange;
pub mod gcra;
pub mod replay;
