//! lhash2 by behaviour: a hash table inside the TCP stack that no program can load or call, so
//! the probe measures what it fixes (one of the port-443 scaling patterns of
//! [`crate::port443::scaling`], ratios to N = 100 in the same run): connection set-up to one of
//! N listeners on distinct addresses stays flat (without lhash2, every SYN walks all listeners
//! on the port). (bhash2 is probed by structure, see `features`: the 443 suite's `bind()`
//! verdict is then checked against a probe that is not itself a measurement.)
//!
//! The limit is the scaling options': the 2x with the full sizes, the mechanism limit
//! of [`scaling::Options::reduced`] with the reduced sizes of TCG guests.

use crate::port443::scaling;
use zrlab_host::error::Result;

/// Environment variable with the socket counts of the 443 measurements (`100,1000,8000`).
///
/// The kernel matrix sets it in TCG guests, where the CPU is 8-9x slower; unset, the full
/// sizes of [`scaling::SIZES`] apply (24,000 sockets, as the kernel selftest binds). Reduced
/// sizes come with the mechanism limit of [`scaling::Options::reduced`].
pub const PORT443_SIZES_ENV: &str = "ZRLAB_PORT443_SIZES";

/// The scaling options to use: [`PORT443_SIZES_ENV`] if set (the first size is the baseline),
/// else the defaults. A malformed value is ignored with a warning.
pub fn port443_scaling_options() -> scaling::Options {
    let Ok(text) = std::env::var(PORT443_SIZES_ENV) else { return scaling::Options::default() };
    let sizes: std::result::Result<Vec<usize>, _> = text.split(',').map(|s| s.trim().parse()).collect();
    match sizes {
        Ok(sizes) if sizes.len() >= 2 => scaling::Options::reduced(sizes),
        _ => {
            tracing::warn!("{PORT443_SIZES_ENV}={text:?} is not a list of sizes; ignored");
            scaling::Options::default()
        }
    }
}

/// lhash2: present or not, with the ratio seen.
pub(super) async fn probe() -> Result<(bool, String)> {
    let opts = port443_scaling_options();
    let report = scaling::run(&opts).await?;
    let largest = opts.sizes.iter().copied().max().unwrap_or_default();
    let limit = opts.ratio_limit;
    let lookup = report.lookup.iter().find(|p| p.n == largest).map_or(f64::INFINITY, |p| p.ratio);
    Ok((
        lookup <= limit,
        format!(
            "connection set-up with {largest} listeners on 443: {lookup:.2}x of N={} (limit {limit:.1}x)",
            opts.sizes[0]
        ),
    ))
}
