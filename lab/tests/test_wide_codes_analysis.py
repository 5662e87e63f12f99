"""lab.wide_codes_analysis on hand-made codes and a generated needle split.

Run with ``python -m pytest -q -p no:xdist lab/tests/test_wide_codes_analysis.py`` from the repository root.
"""

import numpy as np
import torch
from omegaconf import OmegaConf

from lab.wide_codes_analysis import TYPES, table_rows, token_types, type_rows
from lra_sfa.tasks.needle import make_split

TASK = OmegaConf.create({"filler_vocab": 8, "num_keys": 6, "num_values": 4})


def test_token_types_follow_the_needle_layout():
    rng = np.random.default_rng(0)
    split = make_split(rng, 3, 40, np.array([0.0, 0.5, 1.0]), 2, 8, 6, 4)
    tokens = torch.from_numpy(split.inputs.astype(np.int64))
    types = token_types(tokens, TASK)
    assert types.shape == (3, 41) and (types[:, 0] == TYPES.index("cls")).all()
    for row, depth in enumerate([0.0, 0.5, 1.0]):
        start = round(depth * 36) + 1  # +1: the CLS position
        assert types[row, start] == TYPES.index("needle_key")
        assert types[row, start + 1] == TYPES.index("needle_value")
        assert types[row, -2] == TYPES.index("query_marker") and types[row, -1] == TYPES.index("query_key")
        assert (types[row] == TYPES.index("other_key")).sum() == 1  # the second pair
        assert (types[row] == TYPES.index("other_value")).sum() == 1


def test_table_rows_count_occupancy_and_incidences_exactly():
    # one sequence, one head, 4 tokens, 2 tables of 4 features (D = 8): table 0 puts keys 0-2 in feature 1
    k_idx = torch.tensor([[[[1, 4], [1, 5], [1, 6], [2, 7]]]])  # (1, 1, 4, 2)
    q_idx = torch.tensor([[[[1, 4], [3, 4], [0, 7], [2, 6]]]])
    val = torch.ones(1, 1, 4, 2)
    tokens = torch.tensor([[5, 5, 6]])  # CLS + 3 tokens: identical tokens at attention positions 1 and 2
    types = torch.zeros(1, 4, dtype=torch.long)
    rows = {r["table"]: r for r in table_rows((q_idx, val, k_idx, val), types, tokens, 8, 2)}
    assert rows["0"]["occupancy_max"] == 3 and rows["0"]["occupancy_mean"] == 2.0  # buckets {1: 3 keys, 2: 1}
    assert rows["1"]["occupancy_max"] == 1
    # incidences: table 0: q0 meets 3 keys (feature 1), q3 meets 1 (feature 2); table 1: q0 1, q1 1, q2 1, q3 1
    assert rows["0"]["incidences_per_query"] == 4 / 4 and rows["1"]["incidences_per_query"] == 4 / 4
    assert rows["all"]["incidences_per_query"] == 8 / 4


def test_type_rows_find_exact_candidates_in_key_chunks():
    q_idx = torch.tensor([[[[0, 4], [1, 5], [2, 6], [3, 6]]]])
    k_idx = torch.tensor([[[[0, 5], [0, 4], [3, 6], [1, 7]]]])
    val = torch.ones(1, 1, 4, 2)
    types = torch.tensor([[0, 1, 1, 2]])
    rows = type_rows((q_idx, val, k_idx, val), types, torch.tensor([[0, 3]]), key_chunk=3)
    by_type = {r["query_type"]: r for r in rows}
    assert by_type["cls"]["candidates"] == 2 and by_type["cls"]["cand_filler"] == 1  # keys 0 (cls), 1 (filler)
    assert by_type["needle_key"]["candidates"] == 1 and by_type["needle_key"]["cand_filler"] == 1  # key 2 only
    assert by_type["needle_key"]["mean_distance_frac"] == 1 / 4
