"""Evaluation metrics (Image Conductor appendix C.2): `fid`, `fvd` (with the ported `i3d`), and
`motion_control` (CamMC / ObjMC). Import the submodule you need; each loads its network lazily."""
