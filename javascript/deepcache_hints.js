// Hover hints for the DeepCache controls. The WebUI's hints.js shows titles[label] as the
// tooltip of any element whose text is that label; this file only adds entries.
(function() {
    if (typeof titles === "undefined") {
        return;
    }
    var hints = {
        "DeepCache": "Reuse the UNet's deep features between steps: 2-3x faster sampling, almost no loss of quality.",
        "Enable DeepCache": "Reuse the UNet's deep features between steps: 2-3x faster sampling, almost no loss of quality.",
        "Cache interval (0 = auto)": "Denoising steps per full UNet refresh. 0 = auto, the loaded model's own: 3 on SD1.x/2.x, 2 on SDXL (whose cached steps drift further at 3). 1 = no caching; 3 is about 2.5x faster on the UNet, 5 about 3.5x with more quality loss.",
        "Cache depth": "Skip branch where the cheap path stops. 0 = shallowest and fastest; higher keeps more blocks live: slower, closer to the uncached image. Clamped to 8 on SDXL. On Flux, SD3 and Chroma, depth d keeps d blocks live at each end of the stack (0: none).",
        "Cache start": "Fraction of the executed steps before which every step runs the full UNet (protects the composition).",
        "Cache end": "Fraction of the executed steps after which every step runs the full UNet (protects fine detail).",
        "Refresh schedule": "uniform: refresh every interval steps. non-uniform: the paper's schedule, refreshes denser around 30% of the window, same count. adaptive: refresh when the shallow features say the deep ones are stale.",
        "Adaptive threshold": "adaptive schedule only: refresh once the accumulated relative change of the shallow skip feature since the last refresh reaches this. Lower = more refreshes, closer to uncached.",
        "Max cached steps": "adaptive schedule only: never more than this many cached steps in a row.",
        "Forecast": "Extrapolate the cached deep feature from the last two refreshes instead of holding it. 0 = plain DeepCache; 1 = full first-order forecast: much closer to the uncached image with Euler, DPM++ 2M and other deterministic samplers at the same speed; worse with SDE samplers. On a transformer at depth 0 the step after the first also runs in full, so the forecast has two refreshes to start from.",
        "Off below steps": "A pass (first pass or hires fix) requested with fewer steps than this runs uncached, and the DeepCache steps infotext says so. 0 = never off.",
        "Cache the hires fix pass": "Also cache the hires fix pass, with its own interval and depth.",
        "Hires cache interval (0 = auto)": "Steps per full refresh in the hires fix pass (0 = auto, as above).",
        "Hires cache depth": "Skip branch in the hires fix pass (0 = fastest)."
    };
    for (var label in hints) {
        titles[label] = hints[label];
    }
})();
