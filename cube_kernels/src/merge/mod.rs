//! Token merging (ToMe in 3D) kernels: the best destination of every source (row argmax), the
//! top-`r` selection with the merge plan's slot tables and member lists, the segment sums of the
//! merge and the row gather of the unmerge. Portable: plain loads, shared memory, no plane ops,
//! no float atomics, so they run on every CubeCL runtime (lavapipe included), deterministically.

mod gather;
mod launch;
mod matching;
pub(crate) mod scan;

pub use gather::{gather_rows, segment_sum};
pub use launch::{
    MatchLaunch, MatchOutput, MatchTables, RowsShape, launch_gather_rows, launch_match, launch_segment_sum, match_fits,
};
pub use matching::{NONE, merge_plan, row_argmax};
