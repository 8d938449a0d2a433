//! Token merging (ToMe in 3D) kernels: the best destination of every source (fused with the
//! cosine scores, on tensor cores where the runtime has them, or a row argmax over given
//! scores), the top-`r` selection with the merge plan's slot tables and member lists, the
//! segment sums of the merge and the row gather of the unmerge. Apart from the tensor-core
//! matching they are portable (plain loads, shared memory, no plane ops) and run on every CubeCL
//! runtime, lavapipe included. No float atomics: the results are deterministic.

mod gather;
pub(crate) mod launch;
mod matching;
mod metric;
pub(crate) mod scan;
mod similarity;

pub use gather::{gather_rows, segment_sum};
pub use launch::{
    MatchLaunch, MatchOutput, MatchTables, MetricMatch, MetricMatchPath, RowsShape, launch_gather_rows, launch_match,
    launch_match_metric, launch_segment_sum, launch_unit_metric, match_fits, metric_match_path, unit_metric_tile,
};
pub use matching::{NONE, merge_plan, row_argmax};
pub use metric::metric_unit_rows;
pub use similarity::{best_match_mma, best_match_portable};
