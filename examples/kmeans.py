"""Federated k-means on a Gaussian mixture: a k-means++ seeding round, then Lloyd rounds.

Clients hold rows of a 10-component mixture, each client drawing mostly from a few components. Round 0 is
the seeding round: each sampled client uploads a few rows, the server runs k-means++ on that sample. Then
each round is one Lloyd step: clients assign their rows to the nearest centroid and upload per-centroid
sums and counts (through the ordinary aggregator and uplink codec, here 8-bit), the server divides.
It prints test inertia, ARI and NMI (against the component labels) after seeding and after the rounds.

    python examples/kmeans.py
    python examples/kmeans.py --clusters 20 --num-clients 2000 --rounds 30
"""
import argparse

from jaxqfl import algorithms, clustering, compress, data, engine, models, tasks


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--num-clients", type=int, default=1000)
    p.add_argument("--cohort-size", type=int, default=100)
    p.add_argument("--clusters", type=int, default=10, help="mixture components = centroids")
    args = p.parse_args()

    population = data.build("gaussian-mixture", num_clients=args.num_clients, components=args.clusters, seed=0)
    model = models.centroids(args.clusters)
    uplink = compress.from_spec("uniform:8")
    seeds = clustering.seed(population, model, args.clusters, cohort_size=args.cohort_size, run_seed=0,
                            uplink=uplink)
    s = clustering.scores(population, seeds.centroids)
    print(f"k-means++ on {seeds.sample_size} sampled rows: inertia {s['inertia']:,.0f}, "
          f"ARI {s['ari']:.4f}, NMI {s['nmi']:.4f}")

    full_batch = engine.LocalSchedule(local_steps=1, batch_size=None)  # one Lloyd step on all of a client's rows
    sim = engine.build(population, model, algorithms.lloyd(), full_batch,
                       cohort_size=args.cohort_size, task=tasks.clustering(), uplink=uplink)
    state, _ = sim.run_block(clustering.start_state(sim, 0, seeds.centroids), args.rounds)
    s = clustering.scores(population, state.params["centroids"])
    print(f"after {args.rounds} Lloyd rounds: inertia {s['inertia']:,.0f}, ARI {s['ari']:.4f}, NMI {s['nmi']:.4f} "
          f"({population.num_examples:,} rows on {population.num_clients} clients)")


if __name__ == "__main__":
    main()
