#![allow(dead_code)] // each example uses part of it
//! Synthetic videos for the host DiT: one coloured shape per clip (square, disc, triangle or
//! cross) that slides or spins over a dark background, seeded. The "prompt" names shape, colour
//! and motion; its text features are one-hot words.

pub use dit_attention::rng::SplitMix as Rng;

/// Shapes, colours and motions: the prompt vocabulary, in this order.
pub const SHAPES: [&str; 4] = ["square", "disc", "triangle", "cross"];
pub const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.9, 0.15, 0.1]),
    ("green", [0.15, 0.8, 0.2]),
    ("blue", [0.15, 0.3, 0.95]),
    ("yellow", [0.95, 0.85, 0.1]),
    ("cyan", [0.1, 0.85, 0.9]),
    ("magenta", [0.85, 0.15, 0.85]),
];
pub const MOTIONS: [&str; 4] = ["right", "down", "spin", "diagonal"];
/// Words in the vocabulary (the text feature width).
pub const VOCAB: usize = SHAPES.len() + COLOURS.len() + MOTIONS.len();
/// Words per prompt.
pub const WORDS: usize = 3;
/// Latent channels (RGB).
pub const CHANNELS: usize = 3;

/// What a clip shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prompt {
    pub shape: usize,
    pub colour: usize,
    pub motion: usize,
}

impl Prompt {
    /// The `i`-th of all 96 prompts.
    pub fn nth(i: usize) -> Self {
        let i = i % (SHAPES.len() * COLOURS.len() * MOTIONS.len());
        Self { shape: i % 4, colour: (i / 4) % 6, motion: i / 24 }
    }

    /// "red disc spin".
    pub fn text(&self) -> String {
        format!("{} {} {}", COLOURS[self.colour].0, SHAPES[self.shape], MOTIONS[self.motion])
    }

    /// One-hot features of the words, `[WORDS, VOCAB]` row-major.
    pub fn features(&self) -> Vec<f32> {
        let mut f = vec![0.0; WORDS * VOCAB];
        f[self.colour + SHAPES.len()] = 1.0;
        f[VOCAB + self.shape] = 1.0;
        f[2 * VOCAB + SHAPES.len() + COLOURS.len() + self.motion] = 1.0;
        f
    }
}

/// Whether the point `(x, y)` in the shape's own frame (radius 1) is inside it.
fn inside(shape: usize, x: f64, y: f64) -> bool {
    match shape {
        0 => x.abs() <= 0.8 && y.abs() <= 0.8,
        1 => x * x + y * y <= 1.0,
        // Triangle with its centroid at the origin, apex at +y (downwards in image rows).
        2 => (-0.5..=1.0).contains(&y) && x.abs() <= (1.0 - y) / 3f64.sqrt(),
        _ => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
    }
}

/// A clip `[CHANNELS, frames, size, size]` in `[-1, 1]`, row-major; the start position, speed,
/// radius and angle come from `seed`.
pub fn render(prompt: Prompt, seed: u64, frames: usize, size: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let s = size as f64;
    let radius = s * (0.18 + 0.1 * rng.uniform());
    let (x0, y0) = (s * rng.uniform(), s * rng.uniform());
    let speed = s * (0.06 + 0.05 * rng.uniform());
    let angle0 = std::f64::consts::TAU * rng.uniform();
    let spin = 0.25 + 0.2 * rng.uniform();
    let colour = COLOURS[prompt.colour].1;
    let background = -0.8f32;
    let mut out = vec![background; CHANNELS * frames * size * size];
    let sub = 3; // supersampling per axis
    for f in 0..frames {
        let t = f as f64;
        let (dx, dy, angle) = match prompt.motion {
            0 => (speed * t, 0.0, angle0),
            1 => (0.0, speed * t, angle0),
            2 => (0.0, 0.0, angle0 + spin * t),
            _ => (0.7 * speed * t, 0.7 * speed * t, angle0),
        };
        // Wrap around the frame.
        let (cx, cy) = ((x0 + dx).rem_euclid(s), (y0 + dy).rem_euclid(s));
        let (sin, cos) = angle.sin_cos();
        for py in 0..size {
            for px in 0..size {
                let mut hits = 0;
                for sy in 0..sub {
                    for sx in 0..sub {
                        let x = px as f64 + (sx as f64 + 0.5) / sub as f64;
                        let y = py as f64 + (sy as f64 + 0.5) / sub as f64;
                        // Nearest copy of the wrapped centre.
                        let wrap = |d: f64| d - s * (d / s).round();
                        let (ox, oy) = (wrap(x - cx) / radius, wrap(y - cy) / radius);
                        let (lx, ly) = (cos * ox + sin * oy, -sin * ox + cos * oy);
                        hits += inside(prompt.shape, lx, ly) as usize;
                    }
                }
                let cover = hits as f32 / (sub * sub) as f32;
                for (c, &value) in colour.iter().enumerate() {
                    let v = 2.0 * value - 1.0;
                    out[((c * frames + f) * size + py) * size + px] = background + cover * (v - background);
                }
            }
        }
    }
    out
}
