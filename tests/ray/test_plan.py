"""Stage sizing from cluster resources (no Ray started): everything fits at once, 2 CPUs included."""

from __future__ import annotations

import pytest

from pipeline.config import RayConfig
from pipeline.runner.plan import plan_stages


def _requested_cpus(p) -> float:
    return (p.decode_tasks + p.finish_tasks) * p.task_cpus + (p.sam_actors + p.refine_actors) * p.actor_cpus


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 16, 64])
@pytest.mark.parametrize("uses_sam", [False, True])
def test_all_stages_fit_in_the_cluster(cpus, uses_sam):
    p = plan_stages(cpus, 0, uses_sam, RayConfig())
    assert _requested_cpus(p) <= cpus + 1e-9
    assert p.refine_actors >= 1 and p.sam_actors == (p.sam_actors if uses_sam else 0) and p.actor_cpus > 0
    assert (p.sam_actors >= 1) == uses_sam and p.torch_threads >= 1


def test_two_cpus_use_fractional_actors_not_the_deadlocking_layout():
    crm = plan_stages(2, 0, False, RayConfig())
    assert (crm.refine_actors, crm.actor_cpus, crm.decode_tasks, crm.task_cpus) == (1, 1.0, 1, 0.25)
    sam = plan_stages(2, 0, True, RayConfig())
    assert (sam.sam_actors, sam.refine_actors, sam.actor_cpus) == (1, 1, 0.75)
    two = plan_stages(2, 0, False, RayConfig(refine_actors=2))
    assert two.actor_cpus == 0.75 and _requested_cpus(two) == 2.0


def test_gpus_give_each_model_actor_a_gpu_share():
    p = plan_stages(16, 4, False, RayConfig())
    assert (p.refine_actors, p.refine_gpus, p.sam_actors, p.tasks_per_actor) == (4, 1.0, 0, 2)
    s = plan_stages(16, 1, True, RayConfig())
    assert (s.sam_actors, s.refine_actors, s.sam_gpus, s.refine_gpus) == (1, 1, 0.5, 0.5)
    s8 = plan_stages(64, 8, True, RayConfig())
    assert s8.sam_actors + s8.refine_actors == 16 and _requested_cpus(s8) <= 64
    # regions proposals run on CPUs: every GPU goes to a refiner, proposal actors take no GPU
    r = plan_stages(16, 2, True, RayConfig(), sam_on_gpu=False)
    assert (r.sam_actors, r.refine_actors, r.sam_gpus, r.refine_gpus) == (2, 2, 0.0, 1.0)
    assert _requested_cpus(r) <= 16


def test_overrides_and_impossible_requests():
    p = plan_stages(16, 0, False, RayConfig(refine_actors=3, cpus_per_actor=4, decode_tasks=2))
    assert (p.refine_actors, p.actor_cpus, p.decode_tasks, p.torch_threads) == (3, 4.0, 2, 4)
    with pytest.raises(ValueError, match="no CPUs"):
        plan_stages(0, 0, False, RayConfig())


@pytest.mark.parametrize("nodes", [[(1, 0), (1, 0)], [(2, 0), (1, 0), (1, 0)], [(8, 0), (8, 0)],
                                   [(4, 0), (16, 0), (4, 0)], [(1, 0), (1, 0), (1, 0), (1, 0)]])
@pytest.mark.parametrize("uses_sam", [False, True])
@pytest.mark.parametrize("actors", [None, 2])
def test_multi_node_plans_fit_after_losing_the_largest_node(nodes, uses_sam, actors):
    cpus = sum(c for c, _ in nodes)
    p = plan_stages(cpus, 0, uses_sam, RayConfig(refine_actors=actors), nodes=nodes)
    survivors = cpus - max(c for c, _ in nodes)
    assert p.survives_node_loss and _requested_cpus(p) <= survivors + 1e-9
    # each survivor node still has room for the decode/finish tasks next to any actors it gets
    assert (p.decode_tasks + p.finish_tasks) * p.task_cpus > 0
    # the work itself is sized from the whole cluster, like a single node of the same size
    single = plan_stages(cpus, 0, uses_sam, RayConfig(refine_actors=actors))
    assert (p.refine_actors, p.sam_actors, p.decode_tasks, p.torch_threads) == \
        (single.refine_actors, single.sam_actors, single.decode_tasks, single.torch_threads)


def test_two_one_cpu_nodes_leave_task_room_next_to_a_restarted_actor():
    """The layout that hung (issue 14): 2 nodes x 1 CPU, the actor's node is lost."""
    p = plan_stages(2, 0, False, RayConfig(), nodes=[(1, 0), (1, 0)])
    assert (p.refine_actors, p.actor_cpus, p.torch_threads) == (1, 0.75, 1)
    assert p.actor_cpus + (p.decode_tasks + p.finish_tasks) * p.task_cpus <= 1.0
    assert not plan_stages(2, 0, False, RayConfig(), nodes=[(2, 0)]).survives_node_loss
    with pytest.raises(ValueError, match="after losing the largest node"):
        plan_stages(2, 0, False, RayConfig(refine_actors=200), nodes=[(1, 0), (1, 0)])


GIB = 1024**3


def _job(**sections):
    from pipeline.config import config_from_dict

    data = {"input": {"uri": "/data"}, "output": {"prefix": "/out"}, "method": "crm"}
    data.update(sections)
    return config_from_dict(data)


def test_refiner_actors_ask_memory_for_the_largest_image():
    """CPU untiled: 1 GiB + 0.35 GiB per megapixel of input.max_pixels; tiled (tile_encoder auto above
    16 MP, or a tile size): that rate for one tile plus the backbone's full-size rate; GPU: host
    buffers only."""
    from pipeline.runner.plan import plan_job, refiner_memory

    assert refiner_memory(24_000_000, on_gpu=False) == pytest.approx((1 + 0.35 * 24) * GIB)
    assert refiner_memory(24_000_000, on_gpu=True) == pytest.approx((1 + 0.05 * 24) * GIB)
    tile_mp = 2048**2 / 1e6
    tiled = {b: refiner_memory(24_000_000, False, b, "auto") for b in ("mnv2", "r50")}
    assert tiled["mnv2"] == pytest.approx((1 + 0.35 * tile_mp + 0.07 * 24) * GIB)
    assert tiled["r50"] == pytest.approx((1 + 0.35 * tile_mp + 0.13 * 24) * GIB)
    assert refiner_memory(12_000_000, False, "mnv2", "auto") == refiner_memory(12_000_000, False)  # not tiled
    assert refiner_memory(24_000_000, False, "mnv2", 1024) == pytest.approx((1 + 0.35 * 1024**2 / 1e6
                                                                             + 0.07 * 24) * GIB)
    # 192 MP (16000x12000) fits an 8 GiB light actor only tiled
    assert refiner_memory(192_000_000, False, "mnv2", "auto") < 16 * GIB < refiner_memory(192_000_000, False)
    job = _job(input={"uri": "/data", "max_pixels": 24_000_000}, model={"name": "crm_r50"})
    p = plan_job(job, {"CPU": 16.0, "memory": 200.0 * GIB}, [(16.0, 0.0)])
    assert p.refine_memory == pytest.approx(refiner_memory(24_000_000, False, "r50", "auto"))
    assert not p.memory_capped
    off = _job(input={"uri": "/data", "max_pixels": 24_000_000}, refine={"options": {"tile_encoder": "off"}})
    assert plan_job(off, {"CPU": 16.0, "memory": 200.0 * GIB}, [(16.0, 0.0)]).refine_memory == \
        pytest.approx(refiner_memory(24_000_000, False))
    gpu = plan_job(job, {"CPU": 16.0, "GPU": 2.0, "memory": 200.0 * GIB}, [(16.0, 2.0)], 80 * GIB)
    assert gpu.refine_memory == pytest.approx(refiner_memory(24_000_000, True))
    # a Ray that reports no memory resource: nothing asked
    assert plan_job(job, {"CPU": 16.0}, [(16.0, 0.0)]).refine_memory == 0


def test_memory_ask_is_capped_to_fit_and_says_so():
    """60 MP images on a 24 GiB, 2-CPU machine (Ray's memory 14 GiB) with the encoder untiled: the
    ask shrinks so every refiner actor fits in 80% of Ray's memory (else Ray could never start
    them), and the plan says so."""
    from pipeline.runner.plan import describe_memory, plan_job

    untiled = {"options": {"tile_encoder": "off"}}
    sixty = {"uri": "/data", "max_pixels": 60_000_000}
    job = _job(method="samsr-v2.1", model={"name": "samsr_v21_mnv2"}, sam={"proposals": "regions"},
               refine=untiled, input=sixty)
    p = plan_job(job, {"CPU": 2.0, "memory": 14.0 * GIB}, [(2.0, 0.0)])
    assert p.memory_capped and p.refine_actors * p.refine_memory <= 0.8 * 14.0 * GIB + 1
    assert p.refine_memory == pytest.approx(0.8 * 14.0 * GIB / p.refine_actors)
    notice = describe_memory(p, job.input.max_pixels)
    assert "60 MP may need 22.0 GiB" in notice and f"1 x {p.refine_memory / GIB:.1f} GiB memory" in notice
    roomy = plan_job(_job(refine=untiled, input=sixty), {"CPU": 2.0, "memory": 400.0 * GIB}, [(2.0, 0.0)])
    assert describe_memory(roomy, 60_000_000) == f"{roomy.refine_actors} x 22.0 GiB memory"
    # with the encoder tiled (the default above 16 MP) the same job fits without a cap
    v21 = _job(method="samsr-v2.1", model={"name": "samsr_v21_mnv2"}, sam={"proposals": "regions"},
               input=sixty)
    tiled = plan_job(v21, {"CPU": 2.0, "memory": 14.0 * GIB}, [(2.0, 0.0)])
    assert not tiled.memory_capped and describe_memory(tiled, 60_000_000) == "1 x 6.7 GiB memory"
    # two nodes: the refiner actors must also fit without the largest node (in proportion to CPUs)
    two = plan_job(_job(refine=untiled), {"CPU": 8.0, "memory": 32.0 * GIB}, [(4.0, 0.0), (4.0, 0.0)])
    assert two.survives_node_loss and two.refine_actors * two.refine_memory <= 0.8 * 16.0 * GIB + 1


def test_the_default_max_pixels_still_places_several_actors_per_24_gib_node():
    """input.max_pixels defaults to 192 MP (16000x12000): a tiled light actor wants 1 GiB + one
    2048 px tile + 0.07 GiB/MP = 15.9 GiB (measured: 7.47 GiB for the refinement alone at
    192 MP, docs/benchmarks.md). On 24 GiB nodes (Ray's memory ~14 GiB) the ask is capped so that
    every actor the CPUs allow is placed, and the run summary says an image near the limit may
    need more; untiled the same image would want 68 GiB."""
    from pipeline.runner.plan import describe_memory, plan_job, refiner_memory

    job = _job()  # crm_mnv2, tile_encoder auto, input.max_pixels default
    assert job.input.max_pixels == 192_000_000
    wanted = refiner_memory(192_000_000, False, "mnv2", "auto")
    assert wanted == pytest.approx((1 + 0.35 * 2048**2 / 1e6 + 0.07 * 192) * GIB)
    assert refiner_memory(192_000_000, False) > 4 * wanted
    for cpus, actors in ((2.0, 1), (8.0, 3), (16.0, 6)):
        p = plan_job(job, {"CPU": cpus, "memory": 14.0 * GIB}, [(cpus, 0.0)])
        assert p.refine_actors == actors and p.refine_actors * p.refine_memory <= 0.8 * 14.0 * GIB + 1
        assert p.memory_capped and p.memory_wanted == pytest.approx(wanted)
        assert "192 MP may need 15.9 GiB" in describe_memory(p, job.input.max_pixels)
    # a node with room for them: the whole ask, not capped
    roomy = plan_job(job, {"CPU": 8.0, "memory": 64.0 * GIB}, [(8.0, 0.0)])
    assert roomy.refine_actors == 3 and not roomy.memory_capped
    assert describe_memory(roomy, job.input.max_pixels) == "3 x 15.9 GiB memory"


def test_explicit_actor_memory_is_asked_as_is_or_fails_naming_the_key():
    from pipeline.runner.plan import plan_job

    p = plan_job(_job(ray={"refine_actor_memory_gb": 3}), {"CPU": 2.0, "memory": 14.0 * GIB}, [(2.0, 0.0)])
    assert p.refine_memory == 3 * GIB and not p.memory_capped
    with pytest.raises(ValueError, match="ray.refine_actor_memory_gb"):
        plan_job(_job(ray={"refine_actor_memory_gb": 20, "refine_actors": 2}),
                 {"CPU": 2.0, "memory": 14.0 * GIB}, [(2.0, 0.0)])


def test_the_plan_follows_refine_device():
    """cpu: CPU actors sized from the CPUs, no GPU reserved, even on a GPU node; cuda without GPUs:
    a config error naming the key; auto: GPUs when there are some."""
    from pipeline.runner.plan import plan_job, refiner_memory

    res, nodes = {"CPU": 16.0, "GPU": 1.0, "memory": 200.0 * GIB}, [(16.0, 1.0)]
    cpu = plan_job(_job(refine={"device": "cpu"}), res, nodes)
    assert cpu.refine_gpus == 0 and cpu.sam_gpus == 0 and cpu.refine_actors >= 3 and cpu.torch_threads >= 2
    assert cpu.refine_memory == pytest.approx(refiner_memory(_job().input.max_pixels, False, "mnv2", "auto"))
    auto = plan_job(_job(), res, nodes, 80 * GIB)
    assert auto.refine_gpus == 1.0 and auto.refine_actors == 1
    assert plan_job(_job(refine={"device": "cuda"}), res, nodes, 80 * GIB).refine_gpus == 1.0
    with pytest.raises(ValueError, match="refine.device: 'cuda' but the Ray cluster has no GPUs"):
        plan_job(_job(refine={"device": "cuda"}), {"CPU": 16.0}, [(16.0, 0.0)])


def _sam_job(precision: str, max_pixels: int = 60_000_000, tile_encoder="off", **ray):
    return _job(method="samsr-v2.1", model={"name": "samsr_v21_r50"},
                sam={"proposals": "sam", "checkpoint": "/w/sam_vit_h.pth", "model_type": "vit_h"},
                input={"uri": "/data", "max_pixels": max_pixels},
                refine={"precision": precision, "options": {"tile_encoder": tile_encoder}}, ray=ray)


ONE_CARD = {"CPU": 16.0, "GPU": 1.0, "memory": 100.0 * GIB}, [(16.0, 1.0)]


def test_sam_and_refiner_gpu_asks_fit_one_card_by_precision():
    """60 MP untiled beside ViT-H (8 GiB) on a 24 GiB card (21.6 usable): fp32 (17.8 GiB) cannot fit,
    a config error naming the key and the way out; bf16 (11.2 GiB) fits beside SAM, in shares of the
    one card in proportion to the needs (two bf16 refiners would not fit, so no half card each)."""
    from pipeline.runner.plan import describe_memory, plan_job

    with pytest.raises(ValueError, match=r"^input.max_pixels: .*60 MP needs ~17.8 GiB .* in fp32 beside SAM "
                                         r"vit_h .*24.0 GiB .*ray.gpu_memory_gb.*refine.precision: bf16"):
        plan_job(_sam_job("fp32"), *ONE_CARD, 24 * GIB)
    p = plan_job(_sam_job("bf16"), *ONE_CARD, 24 * GIB)
    assert (p.sam_actors, p.refine_actors, p.refine_gpus, p.sam_gpus) == (1, 1, 0.58, 0.42)
    assert p.gpu.refine_bytes / GIB == pytest.approx(11.2, abs=0.01) and p.gpu.sam_bytes == 8 * GIB
    assert p.gpu.refine_bytes + p.gpu.sam_bytes <= 0.9 * 24 * GIB
    assert describe_memory(p, 60_000_000).endswith(
        "0.58 GPU each (~11.2 GiB of a 24 GiB card; SAM actors 0.42 GPU, ~8.0 GiB)")
    # refine.precision auto on a card is bf16 or fp16: both counted at the half-precision rate
    assert plan_job(_sam_job("auto"), *ONE_CARD, 24 * GIB).gpu == p.gpu
    # on an 80 GiB card any two actors fit: half a card each, fp32 asks more memory than bf16
    fp32, bf16 = (plan_job(_sam_job(x), *ONE_CARD, 80 * GIB) for x in ("fp32", "bf16"))
    assert (fp32.refine_gpus, fp32.sam_gpus) == (bf16.refine_gpus, bf16.sam_gpus) == (0.5, 0.5)
    assert fp32.gpu.refine_bytes / bf16.gpu.refine_bytes == pytest.approx(17.8 / 11.2, abs=0.01)


def test_gpu_bound_follows_the_tiled_encoder():
    """The refine path tiles the encoder on a GPU too (tile_encoder auto above 16 MP): the same 60 MP
    fp32 job that cannot fit a 24 GiB card untiled fits tiled (~10 GiB), half a card each."""
    from pipeline.runner.plan import plan_job

    p = plan_job(_sam_job("fp32", tile_encoder="auto"), *ONE_CARD, 24 * GIB)
    assert (p.refine_gpus, p.sam_gpus) == (0.5, 0.5)
    assert p.gpu.refine_bytes / GIB == pytest.approx(9.97, abs=0.01)


def test_cards_too_small_fail_naming_the_key():
    from pipeline.runner.plan import plan_job

    crm = _job(input={"uri": "/data", "max_pixels": 60_000_000}, model={"name": "crm_r50"},
               refine={"precision": "fp32", "options": {"tile_encoder": "off"}})
    with pytest.raises(ValueError, match=r"^input.max_pixels: .*17.8 GiB .*16.0 GiB .*ray.gpu_memory_gb"):
        plan_job(crm, *ONE_CARD, 16 * GIB)
    # ray.gpu_memory_gb wins over what was read, both ways
    with pytest.raises(ValueError, match=r"^input.max_pixels: .*a card of 16.0 GiB"):
        plan_job(_with_ray(crm, gpu_memory_gb=16), *ONE_CARD, 80 * GIB)
    assert plan_job(_with_ray(crm, gpu_memory_gb=80), *ONE_CARD, 16 * GIB).gpu.card_bytes == 80 * GIB
    with pytest.raises(ValueError, match=r"^sam.model_type: SAM vit_h needs ~8.0 GiB.*a card of 8.0 GiB"):
        plan_job(_sam_job("bf16", max_pixels=1_000_000, gpu_memory_gb=8), *ONE_CARD)
    with pytest.raises(ValueError, match=r"^ray.gpu_memory_gb: the memory of the cluster's GPUs could not"):
        plan_job(crm, *ONE_CARD, None)
    # CPU plans never need the card
    assert plan_job(_with_refine(crm, device="cpu"), *ONE_CARD, None).gpu is None


def _with_ray(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, **changes))


def _with_refine(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, **changes))


def test_many_small_cards_give_sam_and_refiner_a_card_each():
    """16 GiB cards: two ViT-H (16 GiB) do not fit one card's 14.4 usable and Ray may pair two SAM
    actors, so with several cards every actor asks a whole card (4 SAM + 4 refiners on 8 cards)."""
    from pipeline.runner.plan import plan_job

    res, nodes = {"CPU": 64.0, "GPU": 8.0, "memory": 400.0 * GIB}, [(32.0, 4.0), (32.0, 4.0)]
    p = plan_job(_sam_job("bf16", max_pixels=24_000_000, tile_encoder="auto"), res, nodes, 16 * GIB)
    assert (p.sam_actors, p.refine_actors, p.sam_gpus, p.refine_gpus) == (4, 4, 1.0, 1.0)
    # the same job on one such card: the pair shares it in proportion (4.8 + 8 GiB fit 14.4)
    one = plan_job(_sam_job("bf16", max_pixels=24_000_000, tile_encoder="auto"), *ONE_CARD, 16 * GIB)
    assert (one.refine_gpus, one.sam_gpus) == (0.37, 0.63) and (one.sam_actors, one.refine_actors) == (1, 1)


def test_explicit_gpu_shares_and_actor_counts_must_fit():
    from pipeline.runner.plan import plan_job

    with pytest.raises(ValueError, match=r"^ray.gpus_per_actor: 0.25 lets 4 actors share a card"):
        plan_job(_sam_job("bf16", gpus_per_actor=0.25), *ONE_CARD, 24 * GIB)
    p = plan_job(_sam_job("bf16", gpus_per_actor=0.25), *ONE_CARD, 80 * GIB)
    assert (p.sam_actors, p.refine_actors, p.sam_gpus, p.refine_gpus) == (2, 2, 0.25, 0.25)
    with pytest.raises(ValueError, match=r"^ray.refine_actors: 3 refiner actors x 1 GPU do not fit in the "
                                         r"cluster's 2 GPUs"):
        plan_job(_job(ray={"refine_actors": 3}), {"CPU": 16.0, "GPU": 2.0}, [(16.0, 2.0)], 80 * GIB)
