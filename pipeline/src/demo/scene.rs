//! A demo scene and everything said about it: one to three coloured shapes, one per third of the
//! image (so "left of" and "where" always have one answer), and the caption, question and
//! detection target drawn from it. Few words and fixed phrasings: a small model can learn them.

use rand::Rng;
use rand::seq::IndexedRandom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn plural(self) -> String {
        format!("{}s", self.name())
    }
}

impl Colour {
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// Saturated and far apart, so JPEG and a 56-pixel resize keep them distinct.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [30, 160, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [245, 205, 20],
        }
    }
}

/// Which third of the image an object is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Left,
    Middle,
    Right,
}

impl Position {
    pub fn name(self) -> &'static str {
        match self {
            Position::Left => "left",
            Position::Middle => "middle",
            Position::Right => "right",
        }
    }

    /// The third a horizontal coordinate in [0, 1] falls in.
    pub fn of(x: f64) -> Position {
        match x {
            x if x < 1.0 / 3.0 => Position::Left,
            x if x < 2.0 / 3.0 => Position::Middle,
            _ => Position::Right,
        }
    }
}

/// One shape. Coordinates are fractions of the image side: `(cx, cy)` is the centre of the
/// shape's square bounding box and `size` its side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub cx: f64,
    pub cy: f64,
    pub size: f64,
}

impl Object {
    /// `[y0, x0, y1, x1]`, normalised: PaliGemma's box order.
    pub fn bbox(&self) -> [f64; 4] {
        let h = self.size / 2.0;
        [self.cy - h, self.cx - h, self.cy + h, self.cx + h]
    }

    pub fn position(&self) -> Position {
        Position::of(self.cx)
    }

    fn phrase(&self) -> String {
        format!("a {} {}", self.colour.name(), self.shape.name())
    }
}

/// The objects (left to right) on a grey background, plain or lightly noisy.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub background: u8,
    /// Amplitude of the per-pixel background noise (0: plain).
    pub noise: u8,
}

const MIN_SIZE: f64 = 0.22;
const MAX_SIZE: f64 = 0.32;
const THIRD: f64 = 1.0 / 3.0;

impl Scene {
    pub fn random(rng: &mut impl Rng) -> Scene {
        let count = rng.random_range(1..=3);
        let mut thirds: Vec<usize> = rand::seq::index::sample(rng, 3, count).into_vec();
        thirds.sort_unstable();
        let mut objects: Vec<Object> = Vec::with_capacity(count);
        for third in thirds {
            // No two objects alike, so "the red circle" always names one object.
            let (shape, colour) = loop {
                let pick = (
                    *Shape::ALL.choose(rng).unwrap(),
                    *Colour::ALL.choose(rng).unwrap(),
                );
                if !objects.iter().any(|o| (o.shape, o.colour) == pick) {
                    break pick;
                }
            };
            let size = rng.random_range(MIN_SIZE..MAX_SIZE);
            // Inside its third horizontally, anywhere vertically, always whole.
            let slack = (THIRD - size) / 2.0;
            let cx = (third as f64 + 0.5) * THIRD + rng.random_range(-slack..slack);
            let cy = rng.random_range(size / 2.0..1.0 - size / 2.0);
            objects.push(Object {
                shape,
                colour,
                cx,
                cy,
                size,
            });
        }
        let background = rng.random_range(150..=215);
        let noise = if rng.random_bool(0.5) {
            rng.random_range(4..=12)
        } else {
            0
        };
        Scene {
            objects,
            background,
            noise,
        }
    }

    pub fn count(&self, shape: Shape) -> usize {
        self.objects.iter().filter(|o| o.shape == shape).count()
    }

    /// "a red circle left of a blue square left of a green triangle": objects left to right.
    pub fn caption(&self) -> String {
        self.objects
            .iter()
            .map(Object::phrase)
            .collect::<Vec<_>>()
            .join(" left of ")
    }

    /// One question about the scene, of a kind drawn uniformly (colour, count, position).
    pub fn question(&self, rng: &mut impl Rng) -> (String, String) {
        let unique: Vec<Shape> = Shape::ALL
            .into_iter()
            .filter(|&s| self.count(s) == 1)
            .collect();
        match rng.random_range(0..3) {
            0 if !unique.is_empty() => {
                let shape = *unique.choose(rng).unwrap();
                let object = self.objects.iter().find(|o| o.shape == shape).unwrap();
                (
                    format!("what colour is the {}?", shape.name()),
                    object.colour.name().to_string(),
                )
            }
            2 => {
                let object = self.objects.choose(rng).unwrap();
                let question = format!(
                    "where is the {} {}?",
                    object.colour.name(),
                    object.shape.name()
                );
                (question, object.position().name().to_string())
            }
            // Count, and the colour question's fallback when no shape is alone. Any shape,
            // present or not: "0" is an answer worth learning.
            _ => {
                let shape = *Shape::ALL.choose(rng).unwrap();
                (
                    format!("how many {} are there?", shape.plural()),
                    self.count(shape).to_string(),
                )
            }
        }
    }

    /// The class to detect: mostly one in the scene, sometimes any (then maybe none to find).
    pub fn detect_label(&self, rng: &mut impl Rng) -> Shape {
        if rng.random_bool(0.8) {
            self.objects.choose(rng).unwrap().shape
        } else {
            *Shape::ALL.choose(rng).unwrap()
        }
    }

    /// The boxes of one class, left to right.
    pub fn boxes(&self, shape: Shape) -> Vec<[f64; 4]> {
        self.objects
            .iter()
            .filter(|o| o.shape == shape)
            .map(Object::bbox)
            .collect()
    }
}
