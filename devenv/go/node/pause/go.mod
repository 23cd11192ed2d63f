// The pod sandbox ("pause") program of the real test node, built by devenv/build-node.sh
// and packed into an image by images/build-pause.sh. Standard library only.
module modelseal.dev/devenv/node/pause

go 1.24.0
