// Frozen perceptual networks (VGG16 / LPIPS taps, ResNet-50, ViT-B/16) and the perceptual loss.

export * from "./net.ts";
export * from "./loss.ts";
export * from "./load.ts";
export { Vgg16, VGG16_DEFAULT, VGG16_MIN_SIZE, VGG16_TAPS, type Vgg16Config } from "./vgg16.ts";
export { ResNet50, RESNET50_DEFAULT, type ResNet50Config } from "./resnet50.ts";
export { VIT_B_DEFAULT, VitB, type VitConfig } from "./vit.ts";
