# Sourced by the scripts in tools/ (not run on its own).
#
#   copy_worktree ROOT DEST [PATH...]
#
# Copies the tracked and new (not ignored) files of the git checkout ROOT -- under the PATHs
# given, else all -- to DEST, keeping their paths, as they are in the working tree: deleted
# files skipped, ignored ones never copied (no .so, no generated .c, no build/, no ignored
# venv). A venv inside the checkout that git does not ignore would be copied: name PATHs then.
copy_worktree() {
    local root="$1" dest="$2"
    shift 2
    mkdir -p "$dest"
    (cd "$root" && git ls-files -z --cached --others --exclude-standard -- "$@" \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 -r cp --parents -t "$dest")
}
