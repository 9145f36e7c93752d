"""The flags of ``samsr train``: each sets one key of ``configs/train.yaml`` (shown in brackets in
its help). ``jobs/train.py`` builds its parser from this table; the defaults are the YAML file's.
"""

from __future__ import annotations

from pipeline.config.flags import Flag

__all__ = ["TRAIN_FLAGS"]

TRAIN_FLAGS: dict[str, list[Flag]] = {
    "data": [
        Flag("--data", "data.uris", append=True, metavar="URI",
             help="input dataset with ground truth (repeatable; any fsspec URI) [data.uris]"),
        Flag("--layout", "data.layout", choices=("prefix", "webdataset", "list"),
             help="input layout of --data (prefix: NAME_im.jpg/NAME_seg.png/NAME_gt.png) [data.layout]"),
        Flag("--image-suffix", "data.image_suffix",
             help="override the layout's image suffix [data.image_suffix]"),
        Flag("--gt-suffix", "data.gt_suffix",
             help="override the layout's ground-truth suffix [data.gt_suffix]"),
        Flag("--photos", "data.photos", metavar="DIR_OR_GLOB",
             help="photographs for composites generated on the fly (pasted shapes, exact gt) [data.photos]"),
        Flag("--composites", "data.composites", kind="int",
             help="on-the-fly composites per epoch [data.composites]"),
        Flag("--max-pixels", "data.max_pixels", kind="int",
             help="decode guard per image [data.max_pixels]"),
    ],
    "model": [
        Flag("--model", "model.name",
             help="registry name: crm_r50, crm_mnv2, samsr_v21_r50, samsr_v21_mnv2 [model.name]"),
        Flag("--pretrained-backbone", "model.pretrained_backbone", switch=True,
             help="initialise the MobileNetV2 encoder from ImageNet weights [model.pretrained_backbone]"),
        Flag("--init-checkpoint", "model.init_checkpoint", metavar="URI",
             help=("start from these weights; a CRM checkpoint into a v2.1 model zero-inits the SAM channels"
                   " [model.init_checkpoint]")),
        Flag("--no-fresh-init", "model.fresh_init", switch=False,
             help=("without --init-checkpoint: keep the builder's init instead of orthogonal extra stem "
                   "channels + Kaiming decoder MLP [model.fresh_init: false]")),
    ],
    "optimisation": [
        Flag("--steps", "optim.steps", kind="int",
             help="total optimizer steps [optim.steps]"),
        Flag("--batch-size", "optim.batch_size", kind="int",
             help="crops per worker per step [optim.batch_size]"),
        Flag("--crop", "optim.crop", kind="int",
             help="crop size in px [optim.crop]"),
        Flag("--patch", "optim.patch", kind="int",
             help="dense query windows of this size per crop; 0 = every crop pixel [optim.patch]"),
        Flag("--patches", "optim.patches", kind="int",
             help="query windows per crop [optim.patches]"),
        Flag("--lr", "optim.lr", kind="float",
             help="Adam learning rate [optim.lr]"),
        Flag("--lr-milestones", "optim.lr_milestones", kind="int_list",
             help=("comma-separated steps where lr *= --lr-gamma (default: 50%% and 83%% of the steps) "
                   "[optim.lr_milestones]")),
        Flag("--lr-gamma", "optim.lr_gamma", kind="float",
             help="step-decay factor [optim.lr_gamma]"),
        Flag("--loss-weights", "optim.loss_weights",
             help="bce,l1,mse,grad, CRM's 0,1,1,5 [optim.loss_weights]"),
        Flag("--input-scale-min", "optim.input_scale_min", kind="float",
             help=("encode the crop downscaled by U(min, 1) (queries stay at crop resolution), like the "
                   "inference cascade's 1/8..1 scales [optim.input_scale_min]")),
        Flag("--p-input-scale", "optim.p_input_scale", kind="float",
             help="probability of that downscaling [optim.p_input_scale]"),
        Flag("--p-lowres", "optim.p_lowres", kind="float",
             help=("probability of the 4-16x low-resolution degradation of a perturbed coarse mask "
                   "[optim.p_lowres]")),
        Flag("--p-annotation", "optim.p_annotation", kind="float",
             help="share of coarse masks that are low-resolution annotations [optim.p_annotation]"),
        Flag("--p-identity", "optim.p_identity", kind="float",
             help="share of coarse masks that are the truth or nearly (IoU >= 0.97) [optim.p_identity]"),
        Flag("--p-truth-jitter", "optim.p_truth_jitter", kind="float",
             help=("share of training truths whose boundary is moved by a smooth ~1 px random field, like a "
                   "hand-drawn line (pipeline.train.perturb.jitter_boundary) [optim.p_truth_jitter]")),
        Flag("--truth-jitter-kinds", "optim.truth_jitter_kinds", kind="str_list",
             help=("comma list of the coarse kinds whose truths may be jittered: identity, annotation, "
                   "perturbed (default all) [optim.truth_jitter_kinds]")),
        Flag("--p-truth-offset", "optim.p_truth_offset", kind="float",
             help=("share of training truths whose line is moved --truth-offset whole pixels outward before "
                   "the coarse mask is made from them (people draw about a pixel outside the image's edge; "
                   "pipeline.boundary.move_line) [optim.p_truth_offset]")),
        Flag("--truth-offset", "optim.truth_offset", kind="int",
             help="pixels outward for --p-truth-offset (default 1) [optim.truth_offset]"),
        Flag("--weight-decay", "optim.weight_decay", kind="float",
             help="Adam weight decay [optim.weight_decay]"),
        Flag("--dropout", "optim.dropout", negative_is_none=True, kind="float",
             help=("fusion dropout while training (CRM's own 0.5 kept short CPU runs at a constant output, "
                   "see MODEL_CARD); negative: keep the model's [optim.dropout]")),
        Flag("--time-budget", "optim.time_budget_min", kind="float", metavar="MINUTES",
             help=("train for about this long: after 50 timed steps the run's length becomes what fits (at "
                   "most --steps) and the lr milestones are scaled with it [optim.time_budget_min]")),
        Flag("--seed", "optim.seed", kind="int",
             help="[optim.seed]"),
    ],
    "run": [
        Flag("--checkpoint-dir", "run.checkpoint_dir", metavar="URI",
             help="checkpoints + log (fsspec URL); required [run.checkpoint_dir]"),
        Flag("--export", "run.export", metavar="URI",
             help="write final weights here (official keys) [run.export]"),
        Flag("--log-every", "run.log_every", kind="int",
             help="[run.log_every]"),
        Flag("--ckpt-every", "run.ckpt_every", kind="int",
             help="[run.ckpt_every]"),
        Flag("--keep-checkpoints", "run.keep_checkpoints", kind="int",
             help="[run.keep_checkpoints]"),
        Flag("--num-workers", "run.num_workers", kind="int",
             help="Ray Train workers (DDP ranks) [run.num_workers]"),
        Flag("--cpus-per-worker", "run.cpus_per_worker", kind="float",
             help="CPUs reserved per worker (may be < 1) [run.cpus_per_worker]"),
        Flag("--use-gpu", "run.use_gpu", switch=True,
             help="one GPU per worker, nccl [run.use_gpu]"),
        Flag("--threads", "run.threads", kind="int",
             help="torch threads per worker (0: Ray's default) [run.threads]"),
        Flag("--loader-workers", "run.loader_workers", kind="int",
             help="DataLoader worker processes per worker [run.loader_workers]"),
        Flag("--epoch-repeats", "run.epoch_repeats", kind="int",
             help="each epoch visits every sample this many times, with other crops [run.epoch_repeats]"),
        Flag("--address", "run.address",
             help="Ray cluster address (default: RAY_ADDRESS or local) [run.address]"),
        Flag("--no-ray", "run.ray", switch=False,
             help="run the loop in this process (no Ray Train) [run.ray: false]"),
    ],
    "SAM colour maps (SAM-SR-v2.1 models)": [
        Flag("--proposals", "sam.proposals", choices=("sam", "regions"),
             help=("proposal source of the colour maps: sam (needs --sam-checkpoint, or --sam-model-type "
                   "tiny for tests) or regions (no weights; the default without --sam-checkpoint) "
                   "[sam.proposals]")),
        Flag("--sam-model-type", "sam.model_type",
             help="vit_h, vit_l, vit_b or tiny [sam.model_type]"),
        Flag("--sam-checkpoint", "sam.checkpoint", metavar="URI",
             help="SAM weights [sam.checkpoint]"),
        Flag("--sam-cache", "sam.cache", metavar="URI",
             help="colour-map cache (default CKPT_DIR/sam_cache) [sam.cache]"),
        Flag("--sam-points-per-side", "sam.points_per_side", kind="int",
             help="[sam.points_per_side]"),
        Flag("--sam-working-size", "sam.working_size", kind="int",
             help="[sam.working_size]"),
        Flag("--sam-seed", "sam.seed", kind="int",
             help="colour seed of the maps, as refine's sam.seed [sam.seed]"),
    ],
}
