#!/usr/bin/env python3
"""Renders a kustomization of packaging/kubernetes offline, the way `kubectl kustomize` does, for the
subset of Kustomize these manifests use: `resources` (files and directories), `namespace`, `labels`
(metadata only), `configMapGenerator` (files, `disableNameSuffixHash`), and `patches` (strategic merge
from a file, including `$patch: delete`, or an inline JSON 6902 patch with a kind/name target).

Why not kustomize itself: CI must render every overlay with no network and no Go binary; where `kubectl`
is installed, tests/integration/packaging compares this renderer's output with `kubectl kustomize`.
Anything outside the subset is refused with the file and key, never silently ignored.

    python packaging/kubernetes/render.py packaging/kubernetes/overlays/gpu > gpu.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
                  "StorageClass", "PersistentVolume", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration", "APIService"}
#: list merge keys of the strategic merge patch for the fields these manifests patch (Kubernetes' own)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


class RenderError(ValueError):
    """The kustomization uses something outside the supported subset, or a patch matches nothing."""


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes' strategic merge for maps and for the keyed lists in MERGE_KEYS; other lists replace."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(target, list) and isinstance(patch, list) and field in MERGE_KEYS:
        merge_key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(item) for item in target]
        added = []
        for item in patch:
            match = next((i for i, existing in enumerate(merged_list)
                          if isinstance(existing, dict) and existing.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                added.append(copy.deepcopy(item))
            else:
                merged_list[match] = strategic_merge(merged_list[match], item, field)
        return added + merged_list  # kustomize puts items the target lacks first
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def json6902(resource: Resource, operations: list[dict[str, Any]], origin: str) -> Resource:
    result = copy.deepcopy(resource)
    for operation in operations:
        op, parts = operation.get("op"), _pointer(operation.get("path", ""))
        if op not in ("add", "replace", "remove"):
            raise RenderError(f"{origin}: JSON patch op {op!r} is not supported (add, replace, remove)")
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, operation["value"])
            elif op == "replace":
                parent[index] = operation["value"]
            else:
                del parent[index]
        else:
            if op in ("replace", "remove") and last not in parent:
                raise RenderError(f"{origin}: JSON patch path {operation['path']} does not exist")
            if op == "remove":
                del parent[last]
            else:
                parent[last] = operation["value"]
    return result


def _load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Resource]:
    """The resources the kustomization in `directory` produces, in the order they were accumulated."""
    kustomization_file = directory / "kustomization.yaml"
    spec = yaml.safe_load(kustomization_file.read_text()) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{kustomization_file}: {', '.join(sorted(unknown))} not supported by this renderer")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else _load_documents(path)
    for generator in spec.get("configMapGenerator", []):
        if not generator.get("options", {}).get("disableNameSuffixHash"):
            raise RenderError(f"{kustomization_file}: configMapGenerator {generator['name']}: content-hash names "
                              "are not supported by this renderer (set options.disableNameSuffixHash)")
        data = {}
        for file_entry in generator.get("files", []):
            key, _, relative = file_entry.partition("=") if "=" in file_entry else (Path(file_entry).name, "", file_entry)
            data[key] = (directory / relative).read_text()
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                          "data": data})
    for index, patch_entry in enumerate(spec.get("patches", [])):
        origin = f"{kustomization_file}: patches[{index}]"
        if "path" in patch_entry:
            for patch in _load_documents(directory / patch_entry["path"]):
                matches = [i for i, r in enumerate(resources) if _key(r) == _key(patch)]
                if not matches:
                    raise RenderError(f"{origin}: no {patch['kind']}/{patch['metadata']['name']} to patch")
                for i in matches:
                    if patch.get("$patch") == "delete":
                        resources[i] = {}
                    else:
                        resources[i] = strategic_merge(resources[i], patch)
                resources = [r for r in resources if r]
        else:
            target = patch_entry.get("target", {})
            operations = yaml.safe_load(patch_entry["patch"])
            matches = [i for i, r in enumerate(resources)
                       if r["kind"] == target.get("kind") and r["metadata"]["name"] == target.get("name")]
            if not matches:
                raise RenderError(f"{origin}: target {target} matches nothing")
            for i in matches:
                resources[i] = json6902(resources[i], operations, origin)
    namespace = spec.get("namespace")
    for resource in resources:
        metadata = resource.setdefault("metadata", {})
        if namespace and resource["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = namespace
        for label_set in spec.get("labels", []):
            if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
                raise RenderError(f"{kustomization_file}: labels with includeSelectors/includeTemplates not supported")
            metadata["labels"] = {**metadata.get("labels", {}), **label_set["pairs"]}
    return resources


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        resources = render(Path(argv[0]))
    except (RenderError, OSError, KeyError, yaml.YAMLError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(resources, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
