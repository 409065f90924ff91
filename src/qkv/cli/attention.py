"""`qkv attention PATH --text TEXT --out FILE`: attention maps as a PNG grid, an interactive page, or bertviz data.

    qkv attention runs/shakespeare-char --text "ROMEO: What light" --out attn.png           # layers x heads
    qkv attention runs/shakespeare-char --text "ROMEO: What light" --out l2h1.png --layer 2 --head 1
    qkv attention path/to/gpt2 --text "The capital of France is" --out attn.html            # the viewer
    qkv attention runs/multi30k --source "Zwei Hunde spielen im Schnee." --out cross.html   # translates first
    qkv attention path/to/bert --text "The car is red" --format bertviz --out attn.pt
    qkv attention runs/mnist-vit --image digit.png --out vit.png                            # patches x patches
    qkv attention runs/mnist-swin --image digit.png --out swin.html --window 3              # one window per stage

PATH is any model qkv loads. The output's extension picks the format (.png, .html; .pt or .json with
--format bertviz). Layers and heads count from 0. For an encoder-decoder, --source is the source text and
--text the target (default: the model's own greedy translation); the PNG shows --map (default: cross).
An image classifier reads --image FILE (resized and converted as `qkv predict` does): a ViT's map is its
patches (and [CLS]); a Swin's are one per stage, of the window --window picks (the PNG: --stage).
"""

from __future__ import annotations

from pathlib import Path

from ..family import Family
from .flags import add_load_arguments, add_overwrite_argument, path_arg, value_parser

FORMATS = {".png": "png", ".html": "html", ".htm": "html", ".pt": "bertviz", ".json": "bertviz"}
MAPS = {"self": "self-attention", "encoder": "encoder self-attention", "decoder": "decoder self-attention",
        "cross": "cross-attention"}


def add_arguments(p) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH",
                   help="a checkpoint qkv loads (qkv run, Hugging Face directory, ...)")
    p.add_argument("--text", help="the text to look at (for an encoder-decoder: the target)")
    p.add_argument("--source", help="encoder-decoder: the source text")
    p.add_argument("--out", required=True, type=path_arg, metavar="FILE",
                   help="output file: .png, .html, or .pt/.json for bertviz")
    p.add_argument("--format", choices=["png", "html", "bertviz"], help="default: from the --out extension")
    add_overwrite_argument(p, "--out")
    p.add_argument("--layer", type=value_parser(int, "--layer", minimum=0), help="one layer (from 0); default all")
    p.add_argument("--head", type=value_parser(int, "--head", minimum=0), help="one head (from 0); default all")
    p.add_argument("--map", choices=list(MAPS), help="which attention the PNG shows (encoder-decoder: "
                                                      "encoder, decoder or cross; default cross)")
    p.add_argument("--truncate", action="store_true", help="keep the first max_len tokens of a long text")
    p.add_argument("--image", type=path_arg, metavar="FILE",
                   help="an image classifier's input image (instead of --text)")
    p.add_argument("--window", type=value_parser(int, "--window", minimum=0), default=None,
                   help="Swin: which window of each stage, row-major from 0 (default 0)")
    p.add_argument("--stage", type=value_parser(int, "--stage", minimum=0), default=None,
                   help="Swin: the stage a PNG shows (default 0)")
    add_load_arguments(p)


def output_format(out: str, fmt: str | None) -> str:
    from ..errors import InputError
    suffix = Path(out).suffix.lower()
    implied = FORMATS.get(suffix)
    if fmt is None:
        if implied is None:
            raise InputError(f"cannot write attention to {out!r}: use a file ending in .png (heat-maps), .html "
                             f"(the viewer), or .pt/.json with --format bertviz")
        return implied
    if implied != fmt:
        wanted = {"png": ".png", "html": ".html", "bertviz": ".pt or .json"}[fmt]
        raise InputError(f"--format {fmt} writes a {wanted} file, but --out is {out!r}; change one of them")
    return fmt


def run(args) -> int:
    from ..errors import InputError, article
    from ..rundir import claim_out_file
    from ..viz.read import attention_maps, encode_inputs, stack_family
    from ._common import load_model, require_family

    fmt = output_format(args.out, args.format)
    claim_out_file(args.out, args.overwrite, "--out", reads=(args.model, args.image))
    if fmt != "png" and (args.layer is not None or args.head is not None or args.map):
        raise InputError("--layer, --head and --map choose what a PNG shows; the viewer and bertviz hold every "
                         "layer and head")
    if fmt == "png":
        from ..viz.output import require_png
        require_png("qkv attention --out FILE.png")      # before the model loads and runs
    if require_family(args.model, "attention", *Family) == Family.IMAGE_CLASSIFIER:
        return _image(args, fmt)
    if args.image:
        raise InputError("--image is for image classifiers; a text model reads --text TEXT")
    if args.window is not None or args.stage is not None:
        raise InputError("--window and --stage pick a Swin's window and stage; a text model has neither: drop them")
    model = load_model(args.model, args)
    kind = stack_family(model)
    text = args.text
    if kind == Family.ENCODER_DECODER and text is None and args.source is not None:
        from ..translate import SearchConfig, translate
        text = translate(model, [args.source], SearchConfig(beam_size=1))[0]
    if text is None:
        raise InputError("pass the text to look at: --text TEXT")
    maps = attention_maps(model, encode_inputs(model, text, args.source, args.truncate))
    title = f"{Path(args.model).name} ({kind})"
    chosen = None
    if fmt == "png":
        wanted = MAPS[args.map or ("cross" if kind == Family.ENCODER_DECODER else "self")]
        chosen = next((m for m in maps if m.name == wanted), None)
        if chosen is None:
            names = [k for k, v in MAPS.items() if any(m.name == v for m in maps)]
            raise InputError(f"{article(kind)} has no {wanted}; --map takes {' or '.join(names)}")
    subtitle = (f"source: {args.source}\ntarget: {text}" if args.source else text)
    return _write(args, fmt, maps, chosen, title, subtitle)


def _write(args, fmt: str, maps, chosen, title: str, subtitle: str) -> int:
    """Write ``maps`` as the page, the bertviz data, or a PNG of ``chosen``; say what was written."""
    if fmt == "png":
        from ..viz.maps import check_index, plot_attention
        check_index(args.layer, chosen.n_layers, "layer")
        check_index(args.head, chosen.n_heads, "head")
        plot_attention(chosen, args.out, args.layer, args.head, title)
    elif fmt == "html":
        from ..viz.viewer import write_html
        write_html(maps, args.out, title, subtitle)
    else:
        from ..viz.bertviz import write_bertviz
        write_bertviz(maps, args.out)
    print(f"wrote {args.out} ({_shown(args, maps, chosen)})")
    return 0


def _shown(args, maps, chosen) -> str:
    """What the file holds, in words: the one map (or layer, head) a PNG shows, or every map."""
    from ..errors import counted
    if chosen is None:
        return ", ".join(f"{m.name} {counted(m.n_layers, 'layer')} x {counted(m.n_heads, 'head')}, "
                         f"{len(m.queries)} x {len(m.keys)} tokens" for m in maps)
    layers = f"layer {args.layer}" if args.layer is not None else counted(chosen.n_layers, "layer")
    heads = f"head {args.head}" if args.head is not None else counted(chosen.n_heads, "head")
    return f"{chosen.name} {layers} x {heads}, {len(chosen.queries)} x {len(chosen.keys)} tokens"


def _image(args, fmt: str) -> int:
    from ..data.images import image_to_pixels, normalize, require_pillow
    from ..errors import InputError
    from ..viz.images import image_attention_maps
    from ..viz.maps import check_index
    from ._common import load_model

    if not args.image or args.text or args.source:
        raise InputError("an image classifier reads --image FILE (not --text or --source)")
    if args.map:
        raise InputError("--map chooses among a text model's attentions; for a Swin use --stage")
    if args.truncate:
        raise InputError("--truncate cuts a long text; an image is resized to the model's input instead: drop it")
    require_pillow()                                     # before the model loads
    model = load_model(args.model, args)
    if not hasattr(model, "blocks") and not hasattr(model, "stages"):
        raise InputError(f"{args.model} holds a {type(model).__name__}, which has no attention: use a ViT or Swin")
    swin = hasattr(model, "stages")
    if not swin and (args.window is not None or args.stage is not None):
        raise InputError("--window and --stage pick a Swin's window and stage; a ViT attends over the whole image "
                         "in one map: drop them")
    if args.stage is not None and fmt != "png":
        raise InputError("--stage chooses the stage a PNG shows; the viewer holds every stage: drop --stage")
    if swin and fmt == "bertviz":
        raise InputError("bertviz shows attention over one token sequence, but a Swin's stages attend within "
                         "windows of different sizes: write a .png (one --stage) or a .html page (every stage)")
    v = model.vision
    pixels, _ = image_to_pixels(args.image, v.image_size, v.channels, v.resample)
    maps = image_attention_maps(model, normalize(pixels, *v.mean_std), args.window or 0)
    title = f"{Path(args.model).name} ({type(model).__name__}) on {Path(args.image).name}"
    chosen = None
    if fmt == "png":
        check_index(args.stage or 0, len(maps), "stage")
        chosen = maps[args.stage or 0]
    return _write(args, fmt, maps, chosen, title, str(args.image))
