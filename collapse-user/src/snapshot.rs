//! The region snapshot format of DESIGN.md (one JSON object per line).
