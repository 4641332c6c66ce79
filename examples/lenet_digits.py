"""A LeNet-style convolutional network on the bundled handwritten digits.

    python examples/lenet_digits.py

LeNet-5's layer stack on images small enough for 2 cores: the 8x8 digits of
graphc.data.load_digits are upsampled to 16x16 (each pixel repeated 2x2: LeNet's 5x5
kernels would leave nothing of an 8x8 image after two of them), then

    conv 1->6 5x5 (zero padding 2), ReLU, max-pool 2    -> 6 x 8 x 8
    conv 6->16 5x5 (zero padding 2), ReLU, max-pool 2   -> 16 x 4 x 4 = 256
    dense 256 -> 120 -> 84 -> 10 (ReLU between), softmax cross-entropy

(the dense part is LeNet's, as in the W5 benchmark).  The 1348 training digits of
graphc.data.train_test_split are augmented once with copies shifted by one pixel (of the
16x16 image) up, down, left and right, zero-filled: 6740 images.  Adam, learning rate 3e-3
with cosine decay, 4 epochs in batches of 32.

Figure (this machine: 2 cores, Numba backend): test accuracy 99.3 % (446 / 449), the
issue's bar being 98 %; test loss 0.032, training loss 0.011; 1.6 s in all (6.2 s on a
first run, with an empty kernel cache).  Seeds 1 and 2 give 99.1 % and 98.9 %.  Without
the shifted copies the same network reaches only 98.0-98.7 % (seeds 0-2, 15 epochs): the
augmentation is what makes the margin.
"""

import os
import time

# One BLAS thread: these matrices are small (batches of 32), where a second thread gains
# nothing, while on a busy 2-core machine OpenBLAS's spinning workers can make each step
# ten times slower.  It must be set before NumPy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402
from graphc import data  # noqa: E402

BATCH = 32
SIZE = 16


def upsample(images):
    """(N, 8, 8) -> (N, 1, 16, 16): every pixel repeated 2 x 2, a channel axis added."""
    return images.repeat(2, axis=1).repeat(2, axis=2)[:, None]


def shifted(images, dy, dx):
    """``images`` (N, C, H, W) moved by (dy, dx) pixels, zeros shifted in."""
    out = np.zeros_like(images)
    h, w = images.shape[2:]
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def augment(images, labels):
    """The images and four copies shifted by one pixel, with their labels."""
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    return (np.concatenate([images] + [shifted(images, dy, dx) for dy, dx in moves]),
            np.tile(labels, 1 + len(moves)))


def build_model():
    return gc.nn.Sequential(
        gc.nn.Conv2d(1, 6, 5, padding=2, activation="relu", name="conv1"),
        gc.nn.MaxPool2d(2, name="pool1"),
        gc.nn.Conv2d(6, 16, 5, padding=2, activation="relu", name="conv2"),
        gc.nn.MaxPool2d(2, name="pool2"),
        gc.nn.Flatten(name="flatten"),
        gc.nn.Dense(16 * (SIZE // 4) ** 2, 120, activation="relu", name="fc1"),
        gc.nn.Dense(120, 84, activation="relu", name="fc2"),
        gc.nn.Dense(84, 10, name="fc3"),
        name="lenet")


def main(epochs=4, progress=True, seed=0, backend=None, augmentation=True):
    start = time.perf_counter()
    images, labels = data.load_digits()
    (x_train, y_train), (x_test, y_test) = data.train_test_split(upsample(images), labels)
    if augmentation:
        x_train, y_train = augment(x_train, y_train)
    model = build_model()

    x, y = gc.input("x", (BATCH, 1, SIZE, SIZE)), gc.input("y", (BATCH,), "int64")
    loss = gc.softmax_cross_entropy(model(x, training=True), y)
    steps = epochs * (len(x_train) // BATCH)
    optimizer = gc.optim.Adam(lr=gc.optim.cosine(3e-3, steps, min_lr=1e-5))
    step = gc.train.make_train_step(loss, optimizer, model=model, backend=backend, seed=seed)
    if progress:
        print(model.summary())

    n_test = len(x_test)
    xe, ye = gc.input("x", (n_test, 1, SIZE, SIZE)), gc.input("y", (n_test,), "int64")
    logits = model(xe)
    evaluate = gc.train.make_eval_step(
        {"loss": gc.softmax_cross_entropy(logits, ye), "acc": gc.train.correct(logits, ye)},
        backend=backend)

    history = gc.train.fit(step, {"x": x_train, "y": y_train}, epochs=epochs,
                           val_data={"x": x_test, "y": y_test}, eval_step=evaluate,
                           seed=seed, progress=progress)
    final = evaluate.evaluate({"x": x_test, "y": y_test}, step)
    results = {"test_accuracy": final["acc"], "test_loss": final["loss"],
               "train_loss": history["loss"][-1], "epochs": epochs,
               "train_images": len(x_train), "seconds": time.perf_counter() - start}
    print(f"LeNet-style CNN on digits: test accuracy {results['test_accuracy']:.2%} "
          f"({round(results['test_accuracy'] * n_test)}/{n_test}), test loss "
          f"{results['test_loss']:.3f}, train loss {results['train_loss']:.4f}, "
          f"{results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
