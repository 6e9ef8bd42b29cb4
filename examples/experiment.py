"""Everything ``jaxqfl run`` does, from a script: a typed ``jaxqfl.Experiment``, checked, run, saved as TOML.

Builds FedProx with a 4-bit uplink on the generated Synthetic(1,1) population, validates it (a setting given
to the wrong algorithm would be refused here, naming both), runs it with ``jaxqfl.run`` (the same run path and
files as the command line), then repeats it from its own TOML: the two final models are bit-identical.

    python examples/experiment.py --out runs/example-experiment
    python examples/experiment.py --rounds 100 --mu 0.1 --out runs/example-experiment
"""
import argparse
import pathlib

import jaxqfl


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--num-clients", type=int, default=200)
    parser.add_argument("--mu", type=float, default=0.01)
    parser.add_argument("--out", default="runs/example-experiment")
    args = parser.parse_args()

    exp = jaxqfl.Experiment.of(num_clients=args.num_clients, cohort_size=20, rounds=args.rounds, eval_every=10,
                               uplink="qsgd:4", seed=0).replace(algorithm="fedprox", mu=args.mu)
    exp.validate()
    try:
        exp.replace(algorithm="fedavg").validate()  # mu belongs to FedProx: refused before anything is built
    except jaxqfl.ExperimentError as e:
        print(f"refused as expected: {e}")
    out = pathlib.Path(args.out)
    first = jaxqfl.run(exp, out=out / "first", overwrite=True)
    (out / "experiment.toml").write_text(exp.to_toml())
    again = jaxqfl.run(jaxqfl.Experiment.from_toml(out / "experiment.toml"), out=out / "again", overwrite=True)
    same = (first.out / "final_params.msgpack").read_bytes() == (again.out / "final_params.msgpack").read_bytes()
    print(f"FedProx (mu {exp.algorithm.mu}), uplink {exp.quantization.uplink}: test accuracy "
          f"{first.summary['final_accuracy']:.4f} after {first.summary['rounds']} rounds, status {first.status}")
    print(f"repeated from {out / 'experiment.toml'}: bit-identical final model: {same}")


if __name__ == "__main__":
    main()
