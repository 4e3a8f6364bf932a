"""The project's training and evaluation speed on each Keras backend, each in its own process.

    python benchmarks/backend_speed.py --data_path=../shared/data/mnist.npz
    python benchmarks/backend_speed.py --backends=tensorflow,torch --steps=100 --repeats=3

Each repetition starts one process per backend (KERAS_BACKEND is read once, at import), in
alternating order, that builds train.py's model and optimizer, traces it on a few batches, then
times --steps training steps (median step, and the wall clock of the whole pass) and the encoding
and decoding of --eval_images test images.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def child(args):
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    sys.path.insert(0, os.path.dirname(HERE))
    import keras

    import measures
    from cvae import build_cvae
    from data import MNIST_IMAGE_SHAPE, load_mnist
    from optimization import make_optimizer
    from timing import StepTimer

    (x_train, _), (x_test, _) = load_mnist(args.data_path)
    keras.utils.set_random_seed(0)
    model = build_cvae(2, MNIST_IMAGE_SHAPE, seed=0)
    model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6, warmup_steps=0))
    model.fit(x_train[:5 * args.batch_size], batch_size=args.batch_size, verbose=0)  # tracing
    x = x_train[:args.steps * args.batch_size]
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(x, batch_size=args.batch_size, verbose=0, callbacks=[timer])
    wall = len(x) / (time.perf_counter() - start)
    measures.reconstruct(model, x_test[:100])  # tracing
    start = time.perf_counter()
    measures.reconstruct(model, x_test[:args.eval_images])
    evaluation = args.eval_images / (time.perf_counter() - start)
    print(json.dumps({"step_seconds": timer.seconds, "wall": wall, "evaluation": evaluation}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_images", type=int, default=2000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    backends = args.backends.split(",")
    results = {backend: [] for backend in backends}
    for repeat in range(args.repeats):
        for backend in backends if repeat % 2 == 0 else backends[::-1]:
            command = [sys.executable, HERE, "--child", f"--data_path={args.data_path}",
                       f"--steps={args.steps}", f"--batch_size={args.batch_size}",
                       f"--eval_images={args.eval_images}"]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "KERAS_BACKEND": backend,
                                       "TF_CPP_MIN_LOG_LEVEL": "2"})
            if done.returncode != 0:
                sys.exit(f"error: the {backend} process failed: {done.stderr[-1500:]}")
            results[backend].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}, {backend}: {results[backend][-1]['wall']:.1f} images/s "
                  f"by wall clock", flush=True)
    print(f"\n{args.repeats} repetitions of {args.steps} training steps of {args.batch_size} "
          f"images per backend, {os.cpu_count()} CPU(s); images/s:")
    print(f"{'backend':>12} {'median step':>12} {'wall clock':>11} {'evaluation':>11}")
    for backend, runs in results.items():
        step = args.batch_size / statistics.median(s for run in runs for s in run["step_seconds"])
        wall = statistics.median(run["wall"] for run in runs)
        evaluation = statistics.median(run["evaluation"] for run in runs)
        print(f"{backend:>12} {step:12.1f} {wall:11.1f} {evaluation:11.1f}")


if __name__ == "__main__":
    main()
