//! The entry points of `xdp_lb` and `xdp_lb_next` (one source, each version's root picks the
//! map layout, `layout`): parse, route, encapsulate.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use zrlab_common::lb::counter;

use super::{encap, maps::Stats, parse, route};

// `inline(always)` reaches the function the macro nests inside the program's entry point.
// Without it the compiler kept the whole path as a function of its own (two programs call
// it), and every packet paid a BPF-to-BPF call and a second prologue and return.
#[xdp]
#[inline(always)]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let stats = Stats::get();
    try_lb::<false>(&ctx, &stats).unwrap_or_else(|()| internal(&stats))
}

/// The same path, then the encapsulation is undone, so that `BPF_PROG_TEST_RUN` with a
/// repeat count (which reuses one buffer) measures the full path every iteration.
#[xdp]
#[inline(always)]
pub fn xdp_lb_bench(ctx: XdpContext) -> u32 {
    let stats = Stats::get();
    try_lb::<true>(&ctx, &stats).unwrap_or_else(|()| internal(&stats))
}

/// A check the earlier ones should have made impossible failed: pass the packet, counted
/// (`counter::INTERNAL`), never silently.
#[inline(always)]
fn internal(stats: &Stats) -> u32 {
    stats.add(counter::INTERNAL);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_lb<const RESTORE: bool>(ctx: &XdpContext, stats: &Stats) -> Result<u32, ()> {
    // Called from the IPv4 and the IPv6 branch of `parse`: without `inline(always)` the
    // compiler made the route-and-encap path a BPF-to-BPF function, the packet passed
    // through the stack, and the two families shared one copy again.
    parse::parse(
        ctx,
        stats,
        #[inline(always)]
        |pkt| forward::<RESTORE>(ctx, &pkt, stats),
    )
}

#[inline(always)]
fn forward<const RESTORE: bool>(ctx: &XdpContext, pkt: &parse::Pkt, stats: &Stats) -> Result<u32, ()> {
    match route::pick(ctx, pkt, stats) {
        route::Route::Real { real, vip_num } => encap::encap::<RESTORE>(ctx, pkt, real, vip_num, stats),
        route::Route::NotVip => parse::pass_non_vip(stats),
        route::Route::NoService => parse::refuse(stats, pkt.flow.dst, counter::NO_SERVICE, xdp_action::XDP_PASS),
        route::Route::NoReal => {
            stats.add(counter::ENCAP_FAILED);
            Ok(xdp_action::XDP_DROP)
        }
    }
}
