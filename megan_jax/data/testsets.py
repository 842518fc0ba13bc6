"""The test sets of Table 1 of the STVSR papers, and any folder of clips, one config field each.

    --config.eval.vid4=/data/Vid4                Vid4: ROOT/{calendar,city,foliage,walk}/<frames>
    --config.eval.vimeo=/data/vimeo_septuplet    Vimeo-Fast, Vimeo-Medium, Vimeo-Slow (the packaged
                                                 lists of Zooming Slow-Mo) of the official layout
    --config.eval.adobe=/data/adobe240/test      Adobe240: ROOT/<clip>/<frames> (or video files)
    --config.eval.folders=/data/my_clips         any folder of clips: ROOT/<clip>/<frames> or
                                                 ROOT/<clip>.mp4 (a column named by
                                                 config.eval.folders_name, default ROOT's base name)

Setting any of them replaces `config.eval.datasets`, and the results table has the columns of
MEGAN's Table 1 in its order, `TABLE1`, then the `folders` column. Frames of a folder are read
in natural order (`Frame 2.png` before `Frame 10.png`, `im2.png` before `im10.png`). Vid4's four
sequences have 41, 34, 49 and 47 frames (`VID4`); Vimeo clips are 7 frames, one window each.
"""

import os

import ml_collections

TABLE1 = ("Vid4", "Vimeo-Fast", "Vimeo-Medium", "Vimeo-Slow", "Adobe240")
VID4 = {"calendar": 41, "city": 34, "foliage": 49, "walk": 47}  # sequence: frames
LAYOUTS = {  # the config.eval fields read here: the layout each expects
    "vid4": "ROOT/calendar, city, foliage, walk: folders of frames",
    "vimeo": "the Vimeo-90K septuplets, ROOT/sequences/00001/0001/im1.png ... im7.png",
    "adobe": "ROOT/<clip>: folders of frames or video files",
    "folders": "ROOT/<clip>: folders of frames or video files",
}


def _spec(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def root_specs(eval_config, lr_root: str | None = None) -> list:
  """Eval specs (see `data.pipeline.open_eval_dataset`) for the sets named by `eval_config.vid4`,
  `.vimeo` and `.adobe`, in Table 1 order, then `.folders`; empty when none is set. Each spec's
  `field` names its config field. `lr_root`: a pre-made LR tree of the Vimeo septuplets
  (config.data.lr_root), else the LR frames are computed."""
  roots = {field: eval_config.get(field) for field in LAYOUTS}
  for field, root in roots.items():
    if root and not os.path.exists(root):
      raise FileNotFoundError(f"config.eval.{field}: {root} does not exist; expected {LAYOUTS[field]}")
  specs = []
  if roots["vid4"]:
    specs.append(_spec(name=TABLE1[0], kind="folders", root=roots["vid4"], names=list(VID4),
                       field="config.eval.vid4"))
  if roots["vimeo"]:
    for name, subset in zip(TABLE1[1:4], ("fast", "medium", "slow")):
      specs.append(_spec(name=name, kind="vimeo", root=roots["vimeo"], list_file=subset,
                         lr_root=lr_root, field="config.eval.vimeo"))
  if roots["adobe"]:
    specs.append(_spec(name=TABLE1[4], kind="folders", root=roots["adobe"],
                       field="config.eval.adobe"))
  if roots["folders"]:
    specs.append(_spec(name=eval_config.get("folders_name"), kind="folders", root=roots["folders"],
                       field="config.eval.folders"))
  return specs
