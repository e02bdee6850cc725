//! dlib's Felzenszwalb HOG features (`extract_fhog_features`, `dlib/image_transforms/fhog.h`)
//! of RGB images, with the SIMD path's float rounding and tie-breaking reproduced.

use image::RgbImage;

/// HOG planes of one pyramid level, laid out as dlib's `extract_fhog_features` with filter
/// padding: 31 planes of `rows x cols`, zero around the valid cells.
#[derive(Debug, Clone)]
pub struct Fhog {
    pub planes: Vec<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
}

const DIRECTIONS: [[f32; 2]; 9] = [
    [1.0000, 0.0000],
    [0.9397, 0.3420],
    [0.7660, 0.6428],
    [0.500, 0.8660],
    [0.1736, 0.9848],
    [-0.1736, 0.9848],
    [-0.5000, 0.8660],
    [-0.7660, 0.6428],
    [-0.9397, 0.3420],
];

/// dlib's `impl_extract_fhog_features` for an RGB image (the colour channel with the strongest
/// gradient at each pixel), `cell` px cells, padded for a `pad_rows x pad_cols` filter.
pub fn fhog(img: &RgbImage, cell: usize, pad_rows: usize, pad_cols: usize) -> Fhog {
    let (nr, nc) = (img.height() as usize, img.width() as usize);
    let cells_nr = (nr as f32 / cell as f32 + 0.5) as usize;
    let cells_nc = (nc as f32 / cell as f32 + 0.5) as usize;
    let hog_nr = cells_nr.saturating_sub(2);
    let hog_nc = cells_nc.saturating_sub(2);
    if hog_nr == 0 || hog_nc == 0 {
        return Fhog { planes: vec![Vec::new(); 31], rows: 0, cols: 0 };
    }
    let (rows, cols) = (hog_nr + pad_rows - 1, hog_nc + pad_cols - 1);
    let (off_r, off_c) = ((pad_rows - 1) / 2, (pad_cols - 1) / 2);
    let hist_nc = cells_nc + 2;
    let mut hist = vec![[0f32; 18]; (cells_nr + 2) * hist_nc];
    let raw = img.as_raw();
    let at = |y: usize, x: usize, ch: usize| raw[3 * (y * nc + x) + ch] as i32;
    let visible_nr = (cells_nr * cell).min(nr) - 1;
    let visible_nc = (cells_nc * cell).min(nc) - 1;
    // The strongest channel's gradient. dlib's 8-wide path breaks ties towards the later channel
    // (`rlen > glen ? red : green`, then `tlen > blen ? that : blue`), its scalar path towards
    // the earlier one.
    let gradient = |y: usize, x: usize, simd: bool| -> (f32, f32, f32) {
        let g: [(i32, i32, i32); 3] = std::array::from_fn(|ch| {
            let gx = at(y, x + 1, ch) - at(y, x - 1, ch);
            let gy = at(y + 1, x, ch) - at(y - 1, x, ch);
            (gx, gy, gx * gx + gy * gy)
        });
        let best = if simd {
            let t = if g[0].2 > g[1].2 { g[0] } else { g[1] };
            if t.2 > g[2].2 { t } else { g[2] }
        } else {
            let mut b = g[0];
            for c in &g[1..] {
                if c.2 > b.2 {
                    b = *c;
                }
            }
            b
        };
        (best.0 as f32, best.1 as f32, best.2 as f32)
    };
    let orientation = |gx: f32, gy: f32| -> usize {
        let (mut best_dot, mut best_o) = (0f32, 0usize);
        for (o, d) in DIRECTIONS.iter().enumerate() {
            let dot = gx * d[0] + gy * d[1];
            if dot > best_dot {
                best_dot = dot;
                best_o = o;
            } else if -dot > best_dot {
                best_dot = -dot;
                best_o = o + 9;
            }
        }
        best_o
    };
    for y in 1..visible_nr {
        let yp = ((y as f64 + 0.5) / cell as f64 - 0.5) as f32;
        let iyp = yp.floor() as i64;
        let vy0 = yp - iyp as f32;
        let vy1 = (1.0 - vy0 as f64) as f32;
        let row = (iyp + 1) as usize;
        // dlib's 8-wide loop runs for x = 1, 9, 17, ... while x < visible_nc - 7.
        let simd_end = if visible_nc >= 9 { 1 + 8 * ((visible_nc - 9) / 8 + 1) } else { 1 };
        for x in 1..visible_nc {
            let (gx, gy, len) = gradient(y, x, x < simd_end);
            let o = orientation(gx, gy);
            let v = len.sqrt();
            let (col, w11, w01, w10, w00);
            if x < simd_end {
                // dlib's 8-wide path: xp = (x + 0.5) / cell + 0.5, truncated; weights times v first.
                let xp = (x as f32 + 0.5) / cell as f32 + 0.5;
                let ixp = xp as i64;
                let vx0 = xp - ixp as f32;
                let vx1 = 1.0f32 - vx0;
                let (vx1, vx0) = (vx1 * v, vx0 * v);
                col = ixp as usize;
                (w11, w01, w10, w00) = (vy1 * vx1, vy0 * vx1, vy1 * vx0, vy0 * vx0);
            } else {
                let xp = ((x as f64 + 0.5) / cell as f64 - 0.5) as f32;
                let ixp = xp.floor() as i64;
                let vx0 = xp - ixp as f32;
                let vx1 = (1.0 - vx0 as f64) as f32;
                col = (ixp + 1) as usize;
                (w11, w01, w10, w00) = (vy1 * vx1 * v, vy0 * vx1 * v, vy1 * vx0 * v, vy0 * vx0 * v);
            }
            hist[row * hist_nc + col][o] += w11;
            hist[(row + 1) * hist_nc + col][o] += w01;
            hist[row * hist_nc + col + 1][o] += w10;
            hist[(row + 1) * hist_nc + col + 1][o] += w00;
        }
    }
    let mut norm = vec![0f32; cells_nr * cells_nc];
    for r in 0..cells_nr {
        for c in 0..cells_nc {
            let h = &hist[(r + 1) * hist_nc + c + 1];
            for o in 0..9 {
                norm[r * cells_nc + c] += (h[o] + h[o + 9]) * (h[o] + h[o + 9]);
            }
        }
    }
    let n_at = |r: usize, c: usize| norm[r * cells_nc + c];
    let mut planes = vec![vec![0f32; rows * cols]; 31];
    let eps = 0.0001f32;
    for y in 0..hog_nr {
        for x in 0..hog_nc {
            // The four block norms, lane by lane as dlib's simd4f: ((z1 + z2) + z3) + z4 + eps.
            let zs = [
                [n_at(y + 1, x + 1), n_at(y, x + 1), n_at(y + 1, x), n_at(y, x)],
                [n_at(y + 1, x + 2), n_at(y, x + 2), n_at(y + 1, x + 1), n_at(y, x + 1)],
                [n_at(y + 2, x + 1), n_at(y + 1, x + 1), n_at(y + 2, x), n_at(y + 1, x)],
                [n_at(y + 2, x + 2), n_at(y + 1, x + 2), n_at(y + 2, x + 1), n_at(y + 1, x + 1)],
            ];
            let nn: [f32; 4] = std::array::from_fn(|lane| {
                0.2f32 * ((((zs[0][lane] + zs[1][lane]) + zs[2][lane]) + zs[3][lane]) + eps).sqrt()
            });
            let n: [f32; 4] = nn.map(|v| 0.1f32 / v);
            let h = &hist[(y + 2) * hist_nc + x + 2];
            let idx = (y + off_r) * cols + x + off_c;
            let mut t = [0f32; 4];
            let lanes = |v: f32| -> [f32; 4] { std::array::from_fn(|l| v.min(nn[l]) * n[l]) };
            let sum = |a: [f32; 4]| (a[0] + a[1]) + (a[2] + a[3]);
            for o in (0..18).step_by(3) {
                let (h0, h1, h2) = (lanes(h[o]), lanes(h[o + 1]), lanes(h[o + 2]));
                planes[o][idx] = sum(h0);
                planes[o + 1][idx] = sum(h1);
                planes[o + 2][idx] = sum(h2);
                for l in 0..4 {
                    t[l] += (h0[l] + h1[l]) + h2[l];
                }
            }
            for o in 0..9 {
                planes[o + 18][idx] = sum(lanes(h[o] + h[o + 9]));
            }
            let k = (2.0 * 0.2357) as f32;
            for l in 0..4 {
                planes[27 + l][idx] = t[l] * k;
            }
        }
    }
    Fhog { planes, rows, cols }
}
